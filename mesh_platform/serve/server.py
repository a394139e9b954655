"""The query service's process: listening, TLS, logins, health, and a graceful stop.

    server = Server(load_mesh(), host="127.0.0.1", port=5433)
    asyncio.run(server.run())

One asyncio loop speaks the protocol of every connection (:mod:`mesh_platform.serve.wire`);
queries run on a thread pool over warm engines (:mod:`mesh_platform.serve.engines`; DuckDB
releases the GIL while it works). The service refuses to listen off loopback without a
certificate, and refuses a cleartext login from off loopback; failed logins are audited with
their cause and rate-limited per client address and per user. ``/healthz`` answers while the
process lives, ``/readyz`` while it accepts logins (not while draining). On SIGTERM or SIGINT
the service stops accepting, lets running queries finish and their results reach their clients
for ``drain_seconds``, then cancels what still runs and closes every session.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import ssl
import time
from collections import defaultdict, deque
from typing import Any

import duckdb
from pygwire import messages as m

from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.query.engine import QueryFailedError
from mesh_platform.serve import dialect
from mesh_platform.serve.engines import Client, Encoder, Engines, Result
from mesh_platform.serve.errors import LoginRefusedError, ProtocolViolation, error_fields
from mesh_platform.serve.identity import AuthenticationError, Authenticator, Identity
from mesh_platform.serve.oidc import load_jwks
from mesh_platform.serve.results import columns, data_rows
from mesh_platform.serve.wire import Connection
from mesh_platform.settings import ServeSettings

log = logging.getLogger("mesh.serve")
LOGIN_SECONDS = 30.0  # a client must finish its start-up and login within this


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class LoginLimiter:
    """Failed logins per key (client address, user) in a sliding window."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str) -> deque[float]:
        times = self._failures[key]
        while times and time.monotonic() - times[0] > self.window:
            times.popleft()
        return times

    def blocked(self, *keys: str) -> float:
        """Seconds until a login for these keys is accepted again (0: now)."""
        waits = [
            self.window - (time.monotonic() - times[0])
            for times in map(self._recent, keys)
            if len(times) >= self.limit
        ]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        for key in keys:
            self._recent(key).append(time.monotonic())


class Server:
    def __init__(self, mesh: Mesh, *, host: str | None = None, port: int | None = None) -> None:
        self.mesh = mesh
        self.settings: ServeSettings = mesh.settings.serve
        self.host = host if host is not None else self.settings.host
        self.port = port if port is not None else self.settings.port
        self.tls_context = self._tls()
        if not is_loopback(self.host) and self.tls_context is None:
            raise MeshError(
                f"the query service will not listen on {self.host} without TLS: passwords and "
                "tokens would cross the network in clear",
                fix="configure serve.tls (certificate, key) in mesh.yaml, or listen on 127.0.0.1",
                path=mesh.root / "mesh.yaml",
            )
        if self.settings.oidc is not None and "://" not in self.settings.oidc.jwks:
            load_jwks(self.settings.oidc, mesh.root)  # a wrong key file fails at start
        self.authenticator = Authenticator(mesh)
        # a thread per running query (it waits on its client while a result streams): one
        # per connection, so slow readers cannot starve the others of threads
        self.engines = Engines(mesh, threads=self.settings.max_connections + 4)
        self.limiter = LoginLimiter(
            self.settings.login_failures, self.settings.login_window_seconds
        )
        self.connections: dict[tuple[int, bytes], Any] = {}  # logged in, by cancel key
        self._open: dict[Any, Connection] = {}  # every connection, by its handler task
        self.ready = False
        self.bound: tuple[str, int] | None = None

    def _tls(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if tls is None:
            return None
        certificate, key = (
            p if p.is_absolute() else self.mesh.root / p for p in (tls.certificate, tls.key)
        )
        for what, path in (("certificate", certificate), ("key", key)):
            if not path.is_file():
                raise MeshError(
                    f"serve.tls.{what} {path} does not exist",
                    fix=f"point serve.tls.{what} at a PEM file",
                    path=self.mesh.root / "mesh.yaml",
                )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(certificate, key)
        except (ssl.SSLError, OSError) as exc:
            raise MeshError(
                f"serve.tls: the certificate or key cannot be loaded ({exc})",
                fix="give a PEM certificate chain and its unencrypted PEM private key",
                path=self.mesh.root / "mesh.yaml",
            ) from None
        return context

    # -- logins -----------------------------------------------------------------------------

    def check_login_allowed(self, peer: str, user: str, app: str, *, tls: bool) -> None:
        if not tls and not is_loopback(peer):
            self.audit_login(peer, user, app, "refused", "cleartext off loopback")
            raise LoginRefusedError(
                "the service accepts logins from other hosts over TLS only",
                fix="connect with sslmode=require (or verify-full)",
            )
        wait = self.limiter.blocked(f"addr:{peer}", f"user:{user}")
        if wait:
            self.audit_login(peer, user, app, "refused", "rate limited")
            raise LoginRefusedError(
                "too many failed logins",
                fix=f"try again in {int(wait) + 1} s with the right credential",
            )

    async def authenticate(self, peer: str, user: str, password: str, app: str) -> Identity:
        try:  # off the query threads: logins go on while every query thread is busy
            identity = await asyncio.to_thread(self.authenticator.authenticate, user, password)
        except AuthenticationError as exc:
            self.limiter.failed(f"addr:{peer}", f"user:{user}")
            self.audit_login(peer, user, app, "failed", getattr(exc, "reason", "refused"))
            log.warning("failed login for %r from %s (%s)", user[:64], peer, exc.what)
            raise
        self.audit_login(peer, identity.principal, app, "ok", identity.method)
        return identity

    def audit_login(self, peer: str, user: str, app: str, status: str, detail: str) -> None:
        entry = {"event": "login", "principal": user[:128], "client": peer, "status": status}
        entry["auth" if status == "ok" else "reason"] = detail
        if app:
            entry["application"] = app
        self.engines.audit.record(entry)

    def still_valid(self, client: Client | None) -> bool:
        return client is not None and self.authenticator.still_valid(client.identity)

    # -- statements ------------------------------------------------------------------------------

    async def catalog_query(
        self, client: Client, statement: Any, portal: Any, encode: Encoder = data_rows
    ) -> Result:
        """A catalog query, on the principal's catalog database (shapes only, no rows)."""
        catalog = await self.engines.shapes(client)
        sql = dialect.to_engine(
            statement.text, portal.parameters, portal.prepared.types,
            user=client.identity.principal,
        )  # fmt: skip

        def run() -> tuple[Any, int]:
            table = catalog.cursor().execute(sql).to_arrow_table()
            return table, table.num_rows

        loop = asyncio.get_running_loop()
        try:
            table, count = await loop.run_in_executor(self.engines.executor, run)
        except duckdb.Error as exc:  # the client's SQL (a service fault stays an internal error)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise QueryFailedError(
                f"catalog query failed: {first[:300]}",
                fix="the service answers catalog queries from information_schema and the "
                "pg_catalog views DuckDB provides",
            ) from None
        described = columns(table.schema)
        rows = [encode(b, described) for b in table.to_batches() if b.num_rows]
        return Result.complete(described, rows, count)

    def cancel(self, process_id: int, secret: bytes) -> None:
        connection = self.connections.get((process_id, secret))
        if connection is not None:
            connection.cancel()

    # -- connections ------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        connection = Connection(self, reader, writer, peer)
        handler = asyncio.current_task()
        self._open[handler] = connection
        try:
            if len(self.connections) >= self.settings.max_connections or not self.ready:
                await connection.read_startup()
                raise ProtocolViolation("too many connections", code="53300", fatal=True)
            client = await asyncio.wait_for(connection.startup(), LOGIN_SECONDS)
            if client is None:
                return
            self.connections[connection.key] = connection
            await connection.serve()
            self._ended(connection, "terminated")
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            self._ended(connection, "disconnected" if not isinstance(exc, TimeoutError)
                        else "login timed out")  # fmt: skip
        except (MeshError, ProtocolViolation) as exc:
            self._ended(connection, f"refused: {type(exc).__name__}")
            await _last_words(writer, error_fields(exc, fatal=True))
        except Exception as exc:  # a fault of the service: this session ends, others go on
            log.exception("session of %s failed", peer)
            self._ended(connection, f"failed: {type(exc).__name__}")
            await _last_words(writer, error_fields(exc, fatal=True))
        finally:
            if connection.client is not None:
                connection.client.closed.set()
            self.connections.pop(connection.key, None)
            self._open.pop(handler, None)
            writer.close()

    def _ended(self, connection: Any, how: str) -> None:
        client = connection.client
        entry = {"event": "session", "client": connection.peer, "status": how}
        if client is not None:
            entry["principal"] = client.identity.principal
            if app := connection.settings.values.get("application_name"):
                entry["application"] = app
        self.engines.audit.record(entry)

    # -- the process ------------------------------------------------------------------------

    async def run(self, *, banner: Any = None) -> None:
        listener = await asyncio.start_server(self.handle, self.host, self.port, limit=2**16)
        self.bound = listener.sockets[0].getsockname()[:2]
        health = await self._health()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.ready = True
        if banner is not None:
            banner(self)
        try:
            await stop.wait()
        finally:
            self.ready = False
            listener.close()
            await self._drain()
            await self._close_sessions()
            if health is not None:
                health.close()
            self.engines.close()

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.drain_seconds
        while self.engines.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def _close_sessions(self) -> None:
        """End every session after the drain: a query still running is cancelled (the process
        would otherwise wait for it, up to its timeout), its client told why (57P01, as
        PostgreSQL's shutdown says it), and the sessions' handlers are let end: a handler the
        loop cancels on its way out logs a spurious traceback (Python 3.11)."""
        shutdown = {"S": "FATAL", "V": "FATAL", "C": "57P01",
                    "M": "terminating connection: the query service is shutting down",
                    "H": "reconnect in a moment"}  # fmt: skip
        for connection in list(self._open.values()):
            connection.cancel()
            if connection.client is not None:
                connection.writer.write(m.ErrorResponse(fields=shutdown).to_wire())
            # abort, not close: the handler may still write, and a closed transport fails then
            connection.writer.transport.abort()
        if self._open:
            await asyncio.wait(list(self._open), timeout=5)

    @property
    def health_port(self) -> int | None:
        port = self.settings.health_port
        if port == 0:
            return None
        return port if port is not None else (self.bound or (0, self.port))[1] + 1000

    async def _health(self) -> asyncio.Server | None:
        """``/healthz`` and ``/readyz`` over plain HTTP/1.0 on the same host: two fixed
        answers a probe reads, which need no web framework."""
        if self.health_port is None:
            return None

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
                path = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
                ok = path == b"/healthz" or (path == b"/readyz" and self.ready)
                status = b"200 OK" if ok else b"503 Service Unavailable"
                if path not in (b"/healthz", b"/readyz"):
                    status, ok = b"404 Not Found", False
                body = b"ok\n" if ok else status + b"\n"
                head = f"HTTP/1.0 {status.decode()}\r\nContent-Type: text/plain\r\n"
                head += f"Content-Length: {len(body)}\r\n\r\n"
                writer.write(head.encode() + body)
                await writer.drain()
            except (TimeoutError, ConnectionError, IndexError):
                pass
            finally:
                writer.close()

        return await asyncio.start_server(answer, self.host, self.health_port)


async def _last_words(writer: asyncio.StreamWriter, fields: dict[str, str]) -> None:
    """Send a fatal error to a client whose session ends (if it still listens)."""
    try:
        writer.write(m.ErrorResponse(fields=fields).to_wire())
        await asyncio.wait_for(writer.drain(), 2)
    except (ConnectionError, TimeoutError, RuntimeError):
        pass
