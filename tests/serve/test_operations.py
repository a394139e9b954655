"""Running `mesh serve`: cancel requests and statement timeouts, many clients at once, clients
that vanish or break the protocol, an oversized query, a killed service restarted on its port,
a graceful stop (SIGTERM) that lets running queries and results finish, the health endpoints,
and what the audit log says of each query.

Tests that only query use the suite's shared service; those that stop or reconfigure a service
start their own (mesh.yaml edited for it, and restored).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from mesh_platform.config import Mesh
from mesh_platform.testing import edited
from mesh_platform.testing_serve import Service, served, start_service
from tests.serve.test_auth import (
    audit,
    expected_rows,
    fields_of,
    message,
    own_service,
    raw_login,
    read_message,
    wait_for_audit,
)

# ~10 s or more on the sample build: a nested loop over 60k x 60k order lines
LONG = (
    "SELECT count(*) FROM sales.order_lines AS a, sales.order_lines AS b "
    "WHERE (a.order_key * b.line_number) % 7 = 3"
)
# 1 to 4 s: 60k x 10k lines, 49 rows out; the same rows, fast, with an equi-join
MEDIUM = (
    "SELECT a.quantity AS q, count(*) AS n FROM sales.order_lines AS a, (SELECT quantity FROM "
    "sales.order_lines ORDER BY order_key, line_number LIMIT 10000) AS b "
    "WHERE a.quantity + b.quantity = 100 GROUP BY 1 ORDER BY 1"
)
MEDIUM_FAST = MEDIUM.replace(", (SELECT", " JOIN (SELECT").replace(
    "AS b WHERE a.quantity + b.quantity = 100", "AS b ON b.quantity = 100 - a.quantity"
)
COUNT = "SELECT count(*) AS n FROM sales.customers"


def _app() -> str:
    return f"ops-{uuid.uuid4().hex[:10]}"


def _ran(mesh: Mesh, app: str, status: str, count: int = 1) -> list[dict[str, Any]]:
    """The audit lines of the queries of application ``app`` with ``status`` (waiting for
    ``count`` of them)."""
    return wait_for_audit(
        mesh,
        lambda e: e.get("application") == app and e.get("status") == status and "event" not in e,
        count=count,
    )


def _when_started(mesh: Mesh, app: str, then: Callable[[], None]) -> threading.Thread:
    """Call ``then`` (in a thread) once a query of ``app`` has started on the engine."""

    def wait() -> None:
        if _ran(mesh, app, "started"):
            then()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def _connect(service: Service, principal: str, secret: str, **params: str) -> psycopg.Connection:
    return psycopg.connect(service.dsn(principal, secret, **params), autocommit=True)


def _in_thread(conn: psycopg.Connection, sql: str) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``sql`` on ``conn`` in a thread, started: its outcome gets the rows and when they
    came, or the error."""
    outcome: dict[str, Any] = {}

    def query() -> None:
        try:
            outcome["rows"] = conn.execute(sql).fetchall()
            outcome["at"] = time.monotonic()
        except psycopg.Error as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=query)
    thread.start()
    return thread, outcome


# -- cancel and timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cancel_safe", "cancel"])
def test_a_cancel_request_stops_the_query_and_the_session_goes_on(
    service, token, sample_build, method
):
    (expected,) = expected_rows(sample_build, "sales", COUNT)
    app = _app()
    sent: list[float] = []
    with _connect(service, "sales", token("sales"), application_name=app) as conn:

        def cancel() -> None:
            sent.append(time.monotonic())
            getattr(conn, method)()  # cancel_safe: libpq's new cancel API; cancel: PQcancel

        canceller = _when_started(sample_build, app, cancel)
        with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
            conn.execute(LONG)
        ended = time.monotonic()
        canceller.join(10)
        assert sent, "the query failed before it started"
        assert cancelled.value.sqlstate == "57014"
        assert "cancelled by its client" in str(cancelled.value)
        assert ended - sent[0] < 5
        assert conn.execute(COUNT).fetchone() == expected  # the same session
    (line,) = _ran(sample_build, app, "cancelled")
    assert line["principal"] == "sales" and "cancelled by its client" in line["reason"]


def test_statement_timeout_stops_a_long_query(service, token, sample_build):
    app = _app()
    with _connect(service, "sales", token("sales"), application_name=app) as conn:
        conn.execute("SET statement_timeout = 300")
        began = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as limited:
            conn.execute(LONG)
        assert time.monotonic() - began < 5
        assert limited.value.sqlstate == "57014"
        assert "longer than 0.3 s" in str(limited.value)
        conn.execute("RESET statement_timeout")
        assert conn.execute("SELECT count(*) AS n FROM sales.order_lines").fetchone()[0] > 0
    (line,) = _ran(sample_build, app, "limited")
    assert "longer than 0.3 s" in line["reason"]


def test_a_late_cancel_request_never_stops_another_sessions_query(service, token, sample_build):
    """A's query ends (its engine session goes back to the pool); B's query runs on that engine
    session; A's cancel request, sent then, must stop nothing of B's."""
    first, second = _app(), _app()
    with (
        _connect(service, "sales", token("sales"), application_name=first) as a,
        _connect(service, "sales", token("sales"), application_name=second) as b,
    ):
        a.execute("SET statement_timeout = 300")
        with pytest.raises(psycopg.errors.QueryCanceled):
            a.execute(LONG)
        b.execute("SET statement_timeout = 2500")
        canceller = _when_started(sample_build, second, a.cancel_safe)
        with pytest.raises(psycopg.errors.QueryCanceled) as limited:
            b.execute(LONG)
        canceller.join(10)
        assert "longer than 2.5 s" in str(limited.value), "A's cancel request stopped B's query"
    assert _ran(sample_build, second, "limited")
    assert not [e for e in audit(sample_build)
                if e.get("application") == second and e.get("status") == "cancelled"]  # fmt: skip


def test_a_cancel_request_while_the_query_waits_for_its_slot_stops_it(sample_build, token):
    """sales may run one query at a time here: B's waits for A's slot. B's cancel request,
    sent while it waits, stops B's query when it gets the slot (it never runs to an answer)."""
    path = sample_build.root / "mesh.yaml"
    text = path.read_text()
    block = "query:\n  principals:\n    sales: {concurrent_queries: 1}\n"
    first, second = _app(), _app()
    with (
        edited(path, text, text.rstrip("\n") + "\n" + block),
        served(sample_build.root) as service,
        _connect(service, "sales", token("sales"), application_name=first) as a,
        _connect(service, "sales", token("sales"), application_name=second) as b,
    ):
        a.execute("SET statement_timeout = 4000")  # A holds the slot for 4 s
        holder, held = _in_thread(a, LONG)
        assert _ran(sample_build, first, "started")
        waiter, waited = _in_thread(b, COUNT)
        time.sleep(0.5)  # B has sent its query and waits for the slot
        assert not [e for e in audit(sample_build)
                    if e.get("application") == second and "event" not in e]  # fmt: skip
        b.cancel_safe()
        holder.join(30)
        waiter.join(30)
        assert isinstance(held.get("error"), psycopg.errors.QueryCanceled)  # its timeout
        assert isinstance(waited.get("error"), psycopg.errors.QueryCanceled), waited
        assert "cancelled by its client" in str(waited["error"])
        assert b.execute(COUNT).fetchone()[0] > 0  # the session goes on; nothing left pending
    assert _ran(sample_build, second, "cancelled")


# -- many clients at once -------------------------------------------------------------------------

CUSTOMERS = [
    "SELECT * FROM sales.customers ORDER BY customer_key",
    "SELECT count(*) AS n FROM sales.customers",
    "SELECT market_segment, count(*) AS n FROM sales.customers GROUP BY 1 ORDER BY 1",
    "SELECT * FROM sales.customers WHERE customer_key % 3 = 0 ORDER BY customer_key",
]
SEGMENTS = "SELECT * FROM marketing.customer_segments ORDER BY customer_key"
WORKLOADS = {
    "sales": [*CUSTOMERS, "SELECT * FROM sales.orders ORDER BY order_key LIMIT 3000"],
    "user:carol": [*CUSTOMERS, "SELECT phone FROM sales.customers ORDER BY phone"],
    "marketing": [*CUSTOMERS, SEGMENTS],
    "user:alice": [SEGMENTS, "SELECT value_tier, count(*) AS n FROM marketing.customer_segments "
                   "GROUP BY 1 ORDER BY 1", *[f"{SEGMENTS} LIMIT {n}" for n in (10, 500, 1200)]],
}  # fmt: skip


def test_sixteen_concurrent_clients_each_see_exactly_their_own_grants(service, token, sample_build):
    expected = {
        principal: [expected_rows(sample_build, principal, sql) for sql in queries]
        for principal, queries in WORKLOADS.items()
    }
    # the grants differ where the clients overlap: a leak between sessions would show
    owner, carol, marketing = (expected[p][0] for p in ("sales", "user:carol", "marketing"))
    assert len(carol) < len(owner) and len(marketing[0]) == 3 < len(owner[0])
    assert {r[3] for r in carol} <= {r[4] for r in owner}  # carol's phones: in clear
    clients = [(principal, i) for principal in WORKLOADS for i in range(4)]
    start = threading.Barrier(len(clients))
    seen: dict[tuple[str, int], list[Any]] = {}
    errors: list[str] = []

    def client(principal: str, i: int) -> None:
        try:
            with _connect(service, principal, token(principal)) as conn:
                start.wait(30)
                order = [(i + k) % 5 for k in range(5)]  # each client its own order
                results = {k: conn.execute(WORKLOADS[principal][k]).fetchall() for k in order}
            seen[principal, i] = [results[k] for k in range(5)]
        except Exception as exc:  # reported below with the client it happened to
            errors.append(f"{principal} #{i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=c) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(seen) == 16
    for (principal, i), results in seen.items():
        for k, rows in enumerate(results):
            assert rows == expected[principal][k], f"{principal} #{i}: {WORKLOADS[principal][k]}"


# -- clients that vanish or break the protocol ----------------------------------------------------


def test_a_client_vanishing_mid_result_ends_only_its_session(service, token, sample_build):
    """A result far larger than the socket buffers and the service's queue: the client reads
    its first message and resets the connection."""
    app = _app()
    mark, logged = len(audit(sample_build)), len(service.output())
    with _connect(service, "user:carol", token("user:carol")) as bystander:
        sock, refused = raw_login(service.port, "sales", token("sales"), application_name=app)
        assert refused is None
        big = ("SELECT a.*, b.line_number AS copy FROM sales.order_lines AS a, "
               "(SELECT line_number FROM sales.order_lines LIMIT 12) AS b")  # fmt: skip
        sock.sendall(message(b"Q", big.encode() + b"\0"))
        assert read_message(sock)[0] == b"T"  # the rows are on their way
        assert read_message(sock)[0] == b"D"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, unread rows and all
        (line,) = _ran(sample_build, app, "failed")
        assert line["reason"] == "the client disconnected mid-result"
        ended = wait_for_audit(sample_build, lambda e: e.get("event") == "session"
                               and e.get("principal") == "sales", since=mark)  # fmt: skip
        assert [e["status"] for e in ended] == ["disconnected"]
        said = service.output()[logged:]
        assert "Traceback" not in said, said[-3000:]  # a client leaving is no fault of the service
        assert bystander.execute(COUNT).fetchone() == expected_rows(sample_build, "user:carol",
                                                                    COUNT)[0]  # fmt: skip
    with _connect(service, "sales", token("sales")) as conn:
        assert conn.execute(COUNT).fetchone()[0] > 0


def _answer(sock: socket.socket) -> tuple[dict[str, str], bool]:
    """The error a connection got, and whether the service then closed it."""
    kind, body = read_message(sock)
    assert kind == b"E", (kind, body)
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    sock.close()
    return fields_of(body), closed


def test_malformed_protocol_ends_only_that_session(service, token, sample_build):
    (expected,) = expected_rows(sample_build, "sales", COUNT)
    secret = token("sales")
    with _connect(service, "sales", secret) as bystander:
        start_ups = {
            "garbage": b"GARBAGE!" * 8,
            "2 GB length": struct.pack("!ii", 2**31 - 1, 196608),
            "negative length": struct.pack("!ii", -8, 196608),
            "unknown request code": struct.pack("!ii", 16, 0x12345678) + b"user\0x\0\0",
        }
        for case, packet in start_ups.items():
            sock = socket.create_connection(("127.0.0.1", service.port), timeout=20)
            sock.sendall(packet)
            fields, closed = _answer(sock)
            assert (fields["C"], fields["S"], closed) == ("08P01", "FATAL", True), case
        after_login = {
            "2 GB message": (b"Q" + struct.pack("!i", 2**31 - 1) + b"SELECT", "54000"),
            "unknown message type": (b"!" + struct.pack("!i", 8) + b"abcd", "08P01"),
            "unterminated query": (b"Q" + struct.pack("!i", 8) + b"SELE", "08P01"),
        }
        for case, (data, code) in after_login.items():
            sock, refused = raw_login(service.port, "sales", secret)
            assert refused is None
            sock.sendall(data)
            fields, closed = _answer(sock)
            assert (fields["C"], closed) == (code, True), case
        assert bystander.execute(COUNT).fetchone() == expected
    with _connect(service, "sales", secret) as conn:
        assert conn.execute(COUNT).fetchone() == expected


def test_an_oversized_query_is_refused_and_the_service_goes_on(sample_build, token):
    (expected,) = expected_rows(sample_build, "sales", COUNT)
    padded = COUNT + " -- {}"
    with own_service(sample_build, "serve:\n  max_query_bytes: 2048\n") as service:
        with _connect(service, "sales", token("sales")) as conn:
            assert conn.execute(padded.format("x" * 1500)).fetchone() == expected  # under it
        for size in (10_000, 2100):
            with _connect(service, "sales", token("sales")) as conn:
                with pytest.raises(psycopg.Error) as refused:
                    conn.execute(padded.format("x" * size))
                assert refused.value.sqlstate == "54000", (size, refused.value)
                assert "2048" in str(refused.value)
        with _connect(service, "sales", token("sales")) as conn:
            assert conn.execute(COUNT).fetchone() == expected


# -- the process ----------------------------------------------------------------------------------


def test_a_killed_service_restarted_on_its_port_serves_reconnecting_clients(sample_build, token):
    (expected,) = expected_rows(sample_build, "sales", COUNT)
    first = start_service(sample_build.root)
    try:
        with _connect(first, "sales", token("sales")) as conn:
            assert conn.execute(COUNT).fetchone() == expected
        first.stop(signal.SIGKILL)
        assert first.process.returncode == -signal.SIGKILL
        with pytest.raises(psycopg.OperationalError):
            _connect(first, "sales", token("sales"))
    finally:
        first.stop(signal.SIGKILL)
    restarted: list[Service] = []
    starter = threading.Thread(
        target=lambda: restarted.append(start_service(sample_build.root, port=first.port))
    )
    starter.start()  # the client retries meanwhile, as a client of a restarting service does
    try:
        rows, failures = None, 0
        while rows is None and failures < 40:
            try:
                with _connect(first, "sales", token("sales")) as conn:  # the same address
                    rows = conn.execute(COUNT).fetchone()
            except psycopg.OperationalError:
                failures += 1
                time.sleep(0.25)
        assert rows == expected, f"no answer after {failures} tries"
    finally:
        starter.join(120)
        for service in restarted:
            service.stop()


def _health(service: Service, path: str) -> int:
    try:
        with urllib.request.urlopen(f"{service.health}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@contextlib.contextmanager
def _draining(mesh: Mesh, block: str) -> Iterator[Service]:
    with own_service(mesh, block) as service:
        yield service
        assert service.process.poll() is not None, "the test was to stop the service"


def test_sigterm_lets_running_queries_and_results_finish(sample_build, token):
    expected = expected_rows(sample_build, "sales", MEDIUM_FAST)
    (lines,) = expected_rows(sample_build, "sales", "SELECT count(*) FROM sales.order_lines")[0]
    lines *= 3
    app = _app()
    with _draining(sample_build, "serve:\n  drain_seconds: 30\n") as service:
        assert (_health(service, "/healthz"), _health(service, "/readyz")) == (200, 200)
        assert _health(service, "/nowhere") == 404
        conn = _connect(service, "sales", token("sales"), application_name=app)
        # a whole result read only after the stop: ~20 MB, more than socket buffers hold
        sock, refused = raw_login(service.port, "sales", token("sales"))
        assert refused is None
        tripled = ("SELECT a.*, b.line_number AS copy FROM sales.order_lines AS a, "
                   "(SELECT line_number FROM sales.order_lines LIMIT 3) AS b")  # fmt: skip
        sock.sendall(message(b"Q", tripled.encode() + b"\0"))
        assert read_message(sock)[0] == b"T"
        running, outcome = _in_thread(conn, MEDIUM)
        assert _ran(sample_build, app, "started")
        stopped = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert (_health(service, "/healthz"), _health(service, "/readyz")) == (200, 503)
        with pytest.raises(psycopg.OperationalError):  # no new logins while draining
            _connect(service, "sales", token("sales"))
        running.join(60)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["rows"] == expected and outcome["at"] > stopped
        tags, rows = [], 0
        with contextlib.suppress(EOFError):
            while True:
                kind, body = read_message(sock)
                rows += kind == b"D"
                tags += [body] if kind in (b"C", b"E") else []
        assert tags and tags[0] == f"SELECT {lines}\0".encode(), f"{rows} rows, then {tags}"
        assert rows == lines
        assert fields_of(tags[1])["C"] == "57P01"  # then the session ends, as PostgreSQL's do
        assert service.process.wait(30) == 0
        conn.close()
    assert "Traceback" not in service.output(), service.output()[-3000:]


def test_a_drain_that_runs_out_of_time_cancels_and_tells_the_client(sample_build, token):
    app = _app()
    with _draining(sample_build, "serve:\n  drain_seconds: 1\n") as service:
        conn = _connect(service, "sales", token("sales"), application_name=app)
        running, outcome = _in_thread(conn, LONG)
        assert _ran(sample_build, app, "started")
        stopped = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(30) == 0
        assert time.monotonic() - stopped < 8, "the stop waited for the query, not the drain"
        running.join(30)
        assert getattr(outcome.get("error"), "sqlstate", None) == "57P01", outcome
        conn.close()
    assert "Traceback" not in service.output(), service.output()[-3000:]


def test_health_endpoints_answer_while_serving(service):
    assert _health(service, "/healthz") == 200
    assert _health(service, "/readyz") == 200


def test_audit_lines_of_queries_name_the_login_client_and_application(service, token, sample_build):
    app = _app()
    with _connect(service, "user:carol", token("user:carol"), application_name=app) as conn:
        conn.execute(COUNT).fetchone()
        conn.execute("SELECT phone FROM sales.customers LIMIT 5").fetchall()
    lines = _ran(sample_build, app, "ok", count=2)
    assert len(lines) == 2
    for line in lines:
        assert (line["auth"], line["client"], line["application"]) == ("token", "127.0.0.1", app)
        assert line["principal"] == "user:carol" and len(line["token"]) == 12
    # the session's end too: psycopg's close is a Terminate message
    (ended,) = wait_for_audit(sample_build, lambda e: e.get("event") == "session"
                              and e.get("application") == app)  # fmt: skip
    assert (ended["status"], ended["principal"]) == ("terminated", "user:carol")
