"""Logging in to `mesh serve`: an issued token and an OpenID Connect JWT, every refusal the same
to the client (28P01, one message) with its cause in the audit log only, a revoked or lapsed
credential stopping its open session on the next query, the login rate limit, and TLS
(required off loopback; psycopg and psql over it).

Every test here starts its own service on the session's sample build, with mesh.yaml edited
for it (and restored): failed logins count against the client address's rate limit, and on
the suite's shared service they would lock every other test out of loopback logins.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from mesh_platform.config import Mesh
from mesh_platform.query.engine import QuerySession
from mesh_platform.serve.errors import LoginRefusedError, error_fields
from mesh_platform.serve.server import Server
from mesh_platform.serve.tokens import token_store
from mesh_platform.testing import edited, run_mesh
from mesh_platform.testing_serve import Service, free_port_pair, issue_token, served

ISSUER = "https://login.example.com"
AUDIENCE = "mesh-serve-test"
CAROL = "SELECT customer_key, phone, market_segment FROM sales.customers ORDER BY customer_key"
# what a refusal must never tell the client (the audit log has it)
CAUSES = ("expired", "revoked", "signature", "audience", "unknown", "mismatch", "wrong",
          "malformed", "lapsed", "not a token")  # fmt: skip


# -- the protocol, by hand: a refused login's SQLSTATE is not in a driver's error text ---------


def startup_packet(user: str, **params: str) -> bytes:
    body = struct.pack("!i", 196608)  # protocol 3.0
    for name, value in {"user": user, "database": "mesh", **params}.items():
        body += name.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"the service closed the connection after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = receive(sock, 5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], receive(sock, length - 4)


def fields_of(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse's body, by their one-letter code (C: SQLSTATE)."""
    return {part[:1]: part[1:] for part in body.decode().split("\0") if part}


def raw_login(
    port: int, user: str, password: str, **params: str
) -> tuple[socket.socket, dict[str, str] | None]:
    """Log in with cleartext password authentication; the open socket and the error fields of
    a refusal (None: logged in, ReadyForQuery read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(startup_packet(user, **params))
    kind, body = read_message(sock)
    if kind == b"E":
        return sock, fields_of(body)
    assert (kind, body[:4]) == (b"R", struct.pack("!i", 3)), (kind, body)  # cleartext password
    sock.sendall(message(b"p", password.encode() + b"\0"))
    while True:
        kind, body = read_message(sock)
        if kind == b"E":
            return sock, fields_of(body)
        if kind == b"Z":
            return sock, None


def refused_login(service: Service, user: str, password: str, app: str) -> dict[str, str]:
    sock, fields = raw_login(service.port, user, password, application_name=app)
    sock.close()
    assert fields is not None, f"{user} logged in with {password[:12]}..."
    return fields


# -- the mesh, the service and credentials ----------------------------------------------------


def audit(mesh: Mesh) -> list[dict[str, Any]]:
    path = mesh.state_dir / "audit" / "queries.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_audit(
    mesh: Mesh, match: Any, *, since: int = 0, count: int = 1, timeout: float = 10
) -> list[dict[str, Any]]:
    """The audit lines (from line ``since`` on) that ``match`` accepts, once there are
    ``count`` of them or ``timeout`` has passed (the service writes them as it goes)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [entry for entry in audit(mesh)[since:] if match(entry)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@contextlib.contextmanager
def own_service(mesh: Mesh, block: str, *args: str) -> Iterator[Service]:
    """A service of its own, started with ``block`` (a ``serve:`` section) in mesh.yaml."""
    path = mesh.root / "mesh.yaml"
    text = path.read_text()
    assert "\nserve:" not in text, "the sample's mesh.yaml has a serve section already"
    with edited(path, text, text.rstrip("\n") + "\n" + block), served(mesh.root, *args) as service:
        yield service


def expected_rows(mesh: Mesh, principal: str, sql: str) -> list[tuple[Any, ...]]:
    """What the embedded engine returns for ``principal``."""
    with QuerySession(principal, mesh=mesh) as session:
        return session.rows(sql)[1]


def tampered(secret: str) -> str:
    return secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {name: rsa.generate_private_key(public_exponent=65537, key_size=2048)
            for name in ("issuer", "impostor")}  # fmt: skip


@pytest.fixture
def oidc_block(tmp_path: Path, keys) -> str:
    """A serve section accepting the test issuer's JWTs (no leeway, so a JWT lapses on time),
    its JWKS a file holding the issuer's public key."""
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys["issuer"].public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1", "use": "sig"}]}))
    return (
        "serve:\n  login_failures: 1000\n  oidc:\n"
        f"    issuer: {ISSUER}\n    audience: {AUDIENCE}\n    jwks: {jwks}\n"
        "    leeway_seconds: 0\n"
    )


def signed(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "carol", "iat": now, "exp": now + 600}
    body.update(claims)
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


# -- logins that work -----------------------------------------------------------------------------


def test_a_token_and_a_jwt_each_log_in_as_their_principal(sample_build, keys, oidc_block):
    expected = expected_rows(sample_build, "user:carol", CAROL)
    owner = expected_rows(sample_build, "sales", "SELECT count(*) FROM sales.customers")
    assert 0 < len(expected) < owner[0][0]  # carol's row filter: the comparison means something
    with own_service(sample_build, oidc_block) as service:
        secret = issue_token(sample_build, "user:carol")
        token = signed(keys["issuer"])
        for user, password, method in (
            ("user:carol", secret, "token"),
            ("user:carol", token, "oidc"),
            ("carol", token, "oidc"),  # the claim's value as the issuer sent it
        ):
            app = f"login-{uuid.uuid4().hex[:8]}"
            dsn = service.dsn(user, password, application_name=app)
            with psycopg.connect(dsn, autocommit=True) as conn:
                assert conn.execute(CAROL).fetchall() == expected, (user, method)
            logins = [e for e in audit(sample_build)
                      if e.get("event") == "login" and e.get("application") == app]  # fmt: skip
            assert [(e["status"], e["auth"], e["principal"]) for e in logins] == [
                ("ok", method, "user:carol")
            ]
            ran = wait_for_audit(sample_build, lambda e, app=app: e.get("application") == app
                                 and e.get("status") == "ok" and "event" not in e)  # fmt: skip
            assert [(e["auth"], e["principal"]) for e in ran] == [(method, "user:carol")]


# -- logins refused -------------------------------------------------------------------------------


def _credentials(mesh: Mesh, keys) -> dict[str, tuple[str, str, str]]:
    """Refused logins by the cause the audit log names: (cause, user, password)."""
    store = token_store(mesh)
    carol = issue_token(mesh, "user:carol")
    expired, _ = store.create("user:carol", expires=dt.timedelta(seconds=-1))
    revoked, record = store.create("user:carol", expires=dt.timedelta(hours=1))
    store.revoke(record.id)
    principals = mesh.root / "principals.yaml"
    text = principals.read_text()
    with edited(principals, text, text + "  - id: user:eve\n    member_of: [team:customer-care]\n"):
        eve = issue_token(mesh, "user:eve")  # eve is gone from principals.yaml after this
    past = int(time.time()) - 600
    return {
        "wrong token": ("wrong secret", "user:carol", tampered(carol)),
        "expired token": ("expired", "user:carol", expired),
        "unknown principal": ("unknown principal", "user:eve", eve),
        "another principal's token": ("principal mismatch", "sales", carol),
        "revoked token": ("revoked", "user:carol", revoked),
        "jwt bad signature": ("bad signature", "user:carol", signed(keys["impostor"])),
        "jwt wrong audience": ("wrong audience", "user:carol", signed(keys["issuer"], aud="x")),
        "jwt expired": ("expired", "user:carol", signed(keys["issuer"], exp=past, iat=past - 60)),
        "not a credential": ("not a token", "user:carol", "hunter2"),
    }


def test_every_refused_login_is_one_generic_28P01_and_the_audit_names_the_cause(
    sample_build, keys, oidc_block
):
    cases = _credentials(sample_build, keys)
    hints = set()
    with own_service(sample_build, oidc_block) as service:
        for case, (cause, user, password) in cases.items():
            app = f"refused-{uuid.uuid4().hex[:8]}"
            fields = refused_login(service, user, password, app)
            assert fields["C"] == "28P01", (case, fields)
            assert fields["S"] == "FATAL", case
            assert fields["M"] == f"password authentication failed for user {user}", case
            hints.add(fields.get("H"))
            with pytest.raises(psycopg.OperationalError) as refused:
                psycopg.connect(service.dsn(user, password, application_name=app))
            said = str(refused.value)
            assert f"password authentication failed for user {user}" in said, case
            told = (said + fields["M"] + fields.get("H", "")).lower()
            assert not [w for w in CAUSES if w in told], f"{case}: the client is told {told!r}"
            assert password not in said
            failed = [e for e in audit(sample_build)
                      if e.get("event") == "login" and e.get("application") == app]  # fmt: skip
            assert [(e["status"], e["reason"], e["principal"]) for e in failed] == [
                ("failed", cause, user)
            ] * 2, case
    assert len(hints) == 1 and None not in hints  # one hint for every cause


def test_a_revoked_or_lapsed_credential_stops_its_open_session_on_the_next_query(
    sample_build, keys, oidc_block
):
    count = "SELECT count(*) FROM sales.customers"
    (expected,) = expected_rows(sample_build, "user:carol", count)
    store = token_store(sample_build)
    with own_service(sample_build, oidc_block) as service:
        bystander = issue_token(sample_build, "user:carol")
        sessions = {"bystander": psycopg.connect(service.dsn("user:carol", bystander),
                                                 autocommit=True)}  # fmt: skip
        try:
            assert sessions["bystander"].execute(count).fetchone() == expected  # engine warm
            start = time.time()
            revoked, record = store.create("user:carol", expires=dt.timedelta(hours=1))
            lapsing, _ = store.create("user:carol", expires=dt.timedelta(seconds=3))
            token = signed(keys["issuer"], exp=int(start) + 5)
            for name, password in (("revoked", revoked), ("lapsing", lapsing), ("jwt", token)):
                sessions[name] = psycopg.connect(service.dsn("user:carol", password),
                                                 autocommit=True)  # fmt: skip
                assert sessions[name].execute(count).fetchone() == expected
            store.revoke(record.id)  # as `mesh token revoke` does it, from another process
            refusals = [_next_query_refused(sessions["revoked"], count)]
            for name in ("lapsing", "jwt", "bystander"):
                assert sessions[name].execute(count).fetchone() == expected, name
            assert time.time() < start + 2, "too slow to test a token expiring in 3 s"
            time.sleep(max(0.0, start + 3.2 - time.time()))  # the token has expired
            refusals.append(_next_query_refused(sessions["lapsing"], count))
            assert sessions["jwt"].execute(count).fetchone() == expected
            time.sleep(max(0.0, int(start) + 5.5 - time.time()))  # past the JWT's exp
            refusals.append(_next_query_refused(sessions["jwt"], count))
            assert sessions["bystander"].execute(count).fetchone() == expected
        finally:
            for conn in sessions.values():
                conn.close()
        assert len(set(refusals)) == 1  # the same words whatever ended it
        fields = refused_login(service, "user:carol", revoked, "after-revocation")
        assert fields["C"] == "28P01"


def _next_query_refused(conn: psycopg.Connection, sql: str) -> str:
    with pytest.raises(psycopg.OperationalError) as refused:
        conn.execute(sql)
    assert refused.value.sqlstate == "28000", refused.value
    with pytest.raises(psycopg.OperationalError) as after:  # fatal: the service closed it
        conn.execute("SELECT 1")
    assert after.value.sqlstate is None, f"the session was not closed: {after.value}"
    return str(refused.value)


# -- the rate limit -------------------------------------------------------------------------------


def test_failed_logins_are_rate_limited_until_the_window_passes(sample_build):
    block = "serve:\n  login_failures: 3\n  login_window_seconds: 3\n"
    with own_service(sample_build, block) as service:
        secret = issue_token(sample_build, "user:carol")
        app = f"limited-{uuid.uuid4().hex[:8]}"
        mark = len(audit(sample_build))
        first = time.monotonic()
        assert refused_login(service, "user:carol", tampered(secret), app)["C"] == "28P01"
        assert refused_login(service, "user:carol", tampered(secret), app)["C"] == "28P01"
        sock, fields = raw_login(service.port, "user:carol", secret)  # under the limit: in
        sock.close()
        assert fields is None
        assert refused_login(service, "user:carol", tampered(secret), app)["C"] == "28P01"
        # the third failure within the window: the right credential is refused too
        fields = refused_login(service, "user:carol", secret, app)
        assert (fields["C"], fields["M"]) == ("28000", "too many failed logins")
        with pytest.raises(psycopg.OperationalError, match="too many failed logins"):
            psycopg.connect(service.dsn("user:carol", secret))
        assert time.monotonic() - first < 2.5, "too slow to test a 3 s window"
        logins = [(e["status"], e.get("reason", e.get("auth")))
                  for e in audit(sample_build)[mark:] if e.get("event") == "login"]  # fmt: skip
        failed, refused = ("failed", "wrong secret"), ("refused", "rate limited")
        assert logins == [failed, failed, ("ok", "token"), failed, refused, refused]
        time.sleep(max(0.0, first + 3.3 - time.monotonic()))
        with psycopg.connect(service.dsn("user:carol", secret), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM sales.customers").fetchone()[0] > 0


# -- TLS ----------------------------------------------------------------------------------------


def test_listening_off_loopback_without_tls_is_refused_at_start(sample_build):
    port = free_port_pair()
    try:
        result = run_mesh(
            sample_build.root, "serve", "--host", "0.0.0.0", "--port", str(port), timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("mesh serve listened on 0.0.0.0 without serve.tls")
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert "serve.tls" in said and "0.0.0.0" in said and "mesh.yaml" in said, said
    assert "Traceback" not in said


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_logins_from_psycopg_and_psql(sample_build, tmp_path):
    certificate, key = _certificate(tmp_path, "mesh-serve")
    stranger, _ = _certificate(tmp_path, "stranger")
    expected = expected_rows(sample_build, "user:carol", CAROL)
    block = f"serve:\n  tls:\n    certificate: {certificate}\n    key: {key}\n"
    with own_service(sample_build, block, "--host", "0.0.0.0") as service:
        secret = issue_token(sample_build, "user:carol")
        dsn = service.dsn("user:carol", secret, sslmode="require")
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.info.pgconn.ssl_in_use is True
            assert conn.execute(CAROL).fetchall() == expected
        verified = service.dsn("user:carol", secret, sslmode="verify-full",
                               sslrootcert=str(certificate))  # fmt: skip
        with psycopg.connect(verified, autocommit=True) as conn:  # the configured certificate
            assert conn.info.pgconn.ssl_in_use is True
        with pytest.raises(psycopg.OperationalError, match="certificate"):
            psycopg.connect(service.dsn("user:carol", secret, sslmode="verify-full",
                                        sslrootcert=str(stranger)))  # fmt: skip
        psql = subprocess.run(
            ["psql", dsn, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-c", "SELECT count(*) FROM sales.customers", "-c", "\\conninfo"],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PGPASSWORD": secret},
        )  # fmt: skip
        assert psql.returncode == 0, psql.stderr
        lines = psql.stdout.splitlines()
        assert lines[0] == str(len(expected))
        assert "SSL connection" in psql.stdout


def test_a_cleartext_login_from_off_loopback_is_refused(sample_build):
    """Not reachable from a loopback client: the check itself, on the service's Server."""
    server = Server(sample_build)
    try:
        for peer in ("192.0.2.10", "2001:db8::1", "10.1.2.3"):
            with pytest.raises(LoginRefusedError) as refused:
                server.check_login_allowed(peer, "user:carol", "psql", tls=False)
            assert error_fields(refused.value, fatal=True)["C"] == "28000"
            assert "TLS" in refused.value.what and "sslmode=require" in refused.value.fix
            server.check_login_allowed(peer, "user:carol", "psql", tls=True)  # TLS: on to the login
        for peer in ("127.0.0.1", "::1"):
            server.check_login_allowed(peer, "user:carol", "psql", tls=False)
    finally:
        server.engines.close()
    refusals = [e for e in audit(sample_build)
                if e.get("event") == "login" and e.get("client") == "192.0.2.10"]  # fmt: skip
    assert refusals and refusals[-1]["status"] == "refused"
    assert refusals[-1]["reason"] == "cleartext off loopback"
    assert refusals[-1]["application"] == "psql"  # which tool tried, for whoever investigates
