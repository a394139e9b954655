"""One client's connection, in PostgreSQL's frontend/backend protocol (version 3.0).

Follows PostgreSQL's published protocol ("Frontend/Backend Protocol": message flow and
message formats): the start-up (``SSLRequest`` answered with TLS when the service has a
certificate; a ``CancelRequest`` stops a running query of the session it names), password
authentication (cleartext, so the service can check a token or a JWT, and only over TLS off
loopback), the simple query protocol and the extended one (Parse, Bind, Describe, Execute,
Close, Sync, Flush; errors skip to the next Sync). Messages are decoded and encoded by
pygwire, a sans-IO codec with the protocol's state machine; this module reads each message's
frame itself first, so a length beyond the service's limit is refused before it is read.

Results are sent in the format the client asks (text, or each type's binary send format); each
statement is routed by :mod:`mesh_platform.serve.dialect` to the session's settings, the
principal's catalog or the federated query engine.
"""

from __future__ import annotations

import logging
import secrets
import struct
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pygwire import BackendConnection, PygwireError
from pygwire import messages as m
from pygwire.constants import TransactionStatus

from mesh_platform.errors import MeshError
from mesh_platform.query.engine import parse_at
from mesh_platform.serve import dialect
from mesh_platform.serve.commands import REPORTED, Settings
from mesh_platform.serve.copy_out import (
    SIGNATURE,
    TRAILER,
    binary_data_rows,
    binary_rows,
    copy_data,
    parse_copy,
    text_rows,
)
from mesh_platform.serve.engines import Client, Encoder, Result, Service
from mesh_platform.serve.errors import ProtocolViolation, error_fields
from mesh_platform.serve.results import columns, data_rows, parameter_text

log = logging.getLogger("mesh.serve")
_STATUS = {"I": TransactionStatus.IDLE, "T": TransactionStatus.IN_TRANSACTION,
           "E": TransactionStatus.ERROR_TRANSACTION}  # fmt: skip
STARTUP_BYTES = 10_000  # a start-up packet is a few names and values


@dataclass
class Prepared:
    statement: dialect.Statement
    types: tuple[int, ...]


@dataclass
class Portal:
    prepared: Prepared
    parameters: tuple[str | None, ...]
    encode: Encoder = data_rows
    result: Result | None = None
    tag: str = ""  # the CommandComplete tag, when not SELECT <rows>
    described: bool = False


class Connection:
    """The protocol of one client: its login, then its statements."""

    def __init__(self, server: Service, reader: Any, writer: Any, peer: str) -> None:
        self.server = server
        self.reader, self.writer = reader, writer
        self.peer = peer
        self.tls = False
        self.pg = BackendConnection()
        self.client: Client | None = None
        self.settings = Settings("")
        self.transaction = "I"
        self.prepared: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.stop_query: Any = None  # stops the running query (a cancel request)
        self.key = (secrets.randbits(31), secrets.token_bytes(4))

    # -- start-up -----------------------------------------------------------------------------

    async def read_startup(self) -> m.PGMessage:
        header = await self.reader.readexactly(4)
        (length,) = struct.unpack("!i", header)
        if not 8 <= length <= STARTUP_BYTES:
            raise ProtocolViolation(f"a start-up packet of {length} bytes", fatal=True)
        body = await self.reader.readexactly(length - 4)
        try:
            decoded = list(self.pg.receive(header + body))
        except PygwireError as exc:
            raise ProtocolViolation(f"malformed start-up packet ({exc})", fatal=True) from None
        if len(decoded) != 1:
            raise ProtocolViolation("a start-up frame held no complete message", fatal=True)
        return decoded[0]

    async def startup(self) -> Client | None:
        """The start-up and login; the authenticated client (None: a cancel request)."""
        while True:
            message = await self.read_startup()
            if isinstance(message, m.SSLRequest):
                context = self.server.tls_context
                self.writer.write(self.pg.send(m.SSLResponse(accepted=context is not None)))
                await self.writer.drain()
                if context is not None:
                    await self.writer.start_tls(context)
                    self.tls = True
            elif isinstance(message, m.GSSEncRequest):
                self.writer.write(self.pg.send(m.GSSResponse(accepted=False)))
                await self.writer.drain()
            elif isinstance(message, m.CancelRequest):
                self.server.cancel(message.process_id, bytes(message.secret_key))
                return None
            elif isinstance(message, m.StartupMessage):
                break
            else:
                raise ProtocolViolation("expected a start-up message", fatal=True)
        params = dict(message.params)
        user = params.get("user", "")
        application = params.get("application_name", "")[:64]
        self.server.check_login_allowed(self.peer, user, application, tls=self.tls)
        self.send(m.AuthenticationCleartextPassword())
        await self.writer.drain()
        password = await self.read()
        if not isinstance(password, m.PasswordMessage):
            raise ProtocolViolation("expected a password message", fatal=True)
        secret = password.password
        secret = secret.decode(errors="replace") if isinstance(secret, bytes) else secret
        identity = await self.server.authenticate(
            self.peer, user, secret.rstrip("\x00"), application
        )
        self.settings = Settings(application)
        self.client = Client(identity, self.peer, application)
        return self.client

    # -- framing ----------------------------------------------------------------------------

    async def read(self) -> m.PGMessage:
        header = await self.reader.readexactly(5)
        (length,) = struct.unpack("!i", header[1:])
        limit = self.server.settings.max_query_bytes  # a Query: its text and a NUL, no more
        if not 4 <= length <= limit + (5 if header[:1] == b"Q" else 1028):
            raise ProtocolViolation(
                f"a message of {length} bytes (the service accepts queries of {limit} bytes)",
                code="54000" if length >= 4 else "08P01",
            )
        body = await self.reader.readexactly(length - 4)
        try:
            decoded = list(self.pg.receive(header + body))
        except PygwireError as exc:
            raise ProtocolViolation(f"malformed {header[:1]!r} message ({exc})") from None
        if len(decoded) != 1:
            raise ProtocolViolation("a frame held no complete message")
        return decoded[0]

    def send(self, *messages: m.PGMessage) -> None:
        for message in messages:
            self.writer.write(self.pg.send(message))

    def send_error(self, exc: BaseException) -> None:
        self.send(m.ErrorResponse(fields=error_fields(exc)))

    def ready(self) -> None:
        self.send(m.ReadyForQuery(status=_STATUS[self.transaction]))

    # -- the loop -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer the client's messages until it terminates or disconnects."""
        self.send(m.AuthenticationOk())
        for name, value in {
            **REPORTED,
            "application_name": self.settings.values["application_name"],
        }.items():
            self.send(m.ParameterStatus(name=name, value=value))
        self.send(m.BackendKeyData(process_id=self.key[0], secret_key=self.key[1]))
        self.ready()
        await self.writer.drain()
        skipping = False  # after an error in the extended protocol: discard until Sync
        while True:
            message = await self.read()
            if isinstance(message, m.Terminate):
                return
            if isinstance(message, m.Query):
                await self.simple(message.query_string)
                self.ready()
            elif isinstance(message, m.Sync):
                skipping = False
                self.ready()
            elif isinstance(message, m.Flush):
                pass
            elif not skipping:
                try:
                    await self.extended(message)
                except Exception as exc:  # the statement fails; the session goes on
                    _unless_fatal(exc, MeshError, ProtocolViolation, ValueError)
                    self.send_error(exc)
                    self.fail_transaction()
                    skipping = True
            await self.writer.drain()

    def fail_transaction(self) -> None:
        if self.transaction == "T":
            self.transaction = "E"

    # -- simple query protocol ------------------------------------------------------------------

    async def simple(self, text: str) -> None:
        try:
            statements = dialect.split(text)
        except MeshError as exc:
            self.send_error(exc)
            self.fail_transaction()
            return
        for part in statements:
            try:
                statement = dialect.classify(part)
                if statement.kind == "empty":
                    self.send(m.EmptyQueryResponse())
                    continue
                if statement.kind == "copy":
                    await self.copy_out(statement.text)
                    continue
                portal = Portal(Prepared(statement, ()), ())
                await self.start(portal)
                if portal.result is not None:
                    self.send(_row_description(portal.result))
                await self.execute(portal, 0)
            except Exception as exc:  # the statement fails; the session goes on
                _unless_fatal(exc, MeshError, ProtocolViolation)
                self.send_error(exc)
                self.fail_transaction()
                return
            await self.writer.drain()

    async def copy_out(self, text: str) -> None:
        """``COPY (query) TO STDOUT``: the query's rows as a copy stream (binary or text)."""
        query, binary = parse_copy(text)
        statement = dialect.classify(query)
        if statement.kind not in ("catalog", "products"):
            raise ProtocolViolation("COPY copies the result of a query", code="0A000")
        portal = Portal(Prepared(statement, ()), (), binary_rows if binary else text_rows)
        await self.start(portal)
        assert portal.result is not None
        fmt = 1 if binary else 0
        self.send(m.CopyOutResponse(overall_format=fmt,
                                    col_formats=[fmt] * len(portal.result.columns)))  # fmt: skip
        # As PostgreSQL sends it: the binary header in the message of the first row, the
        # trailer in a message of its own (or with the header when there is no row).
        header = SIGNATURE if binary else b""
        while (rows := await portal.result.next_rows()) is not None:
            rows[0], header = header + rows[0], b""
            self.writer.write(b"".join(map(copy_data, rows)))
            await self.writer.drain()
        if binary:
            self.writer.write(copy_data(header + TRAILER))
        self.send(m.CopyDone(), m.CommandComplete(tag=f"COPY {portal.result.count}"))

    # -- extended query protocol ----------------------------------------------------------------

    async def extended(self, message: m.PGMessage) -> None:
        if isinstance(message, m.Parse):
            statement = dialect.classify(message.query)
            self.prepared[message.statement] = Prepared(statement, tuple(message.param_types))
            self.send(m.ParseComplete())
        elif isinstance(message, m.Bind):
            self.portals[message.portal] = self.bind(message)
            self.send(m.BindComplete())
        elif isinstance(message, m.Describe):
            await self.describe(message)
        elif isinstance(message, m.Execute):
            portal = self.portals.get(message.portal)
            if portal is None:
                raise ProtocolViolation(f"portal {message.portal!r} does not exist", code="34000")
            if portal.prepared.statement.kind == "copy":
                await self.copy_out(portal.prepared.statement.text)
                return
            if portal.result is None and not portal.described:
                await self.start(portal)
            await self.execute(portal, message.max_rows)
        elif isinstance(message, m.Close):
            (self.prepared if message.kind == "S" else self.portals).pop(message.name, None)
            self.send(m.CloseComplete())
        else:
            raise ProtocolViolation(f"unexpected message {type(message).__name__}")

    def bind(self, message: m.Bind) -> Portal:
        prepared = self.prepared.get(message.statement)
        if prepared is None:
            raise ProtocolViolation(
                f"prepared statement {message.statement!r} does not exist", code="26000"
            )
        binary = set(message.result_formats) == {1}
        if prepared.statement.kind != "copy" and set(message.result_formats) - {0} and not binary:
            raise ProtocolViolation(
                "results are sent all in text or all in binary format", code="0A000"
            )
        formats = message.param_formats or [0]
        values: list[str | None] = []
        for i, raw in enumerate(message.param_values):
            binary = (formats[i] if len(formats) > 1 else formats[0]) == 1
            oid = prepared.types[i] if i < len(prepared.types) else 0
            try:
                values.append(None if raw is None else parameter_text(bytes(raw), oid, binary))
            except (ValueError, struct.error, UnicodeDecodeError):
                raise ProtocolViolation(
                    f"parameter ${i + 1} cannot be read (type oid {oid}, "
                    f"{'binary' if binary else 'text'} format)",
                    code="22P03",
                ) from None
        return Portal(prepared, tuple(values), binary_data_rows if binary else data_rows)

    async def describe(self, message: m.Describe) -> None:
        if message.kind == "S":
            prepared = self.prepared.get(message.name)
            if prepared is None:
                raise ProtocolViolation(
                    f"prepared statement {message.name!r} does not exist", code="26000"
                )
            count = max(prepared.statement.parameters, len(prepared.types))
            types = [prepared.types[i] if i < len(prepared.types) else 25 for i in range(count)]
            self.send(m.ParameterDescription(type_oids=[t or 25 for t in types]))
            # the columns: known by running the query without rows (no parameter values yet)
            probe = Portal(prepared, (None,) * count)
            await self.start(probe, limit_zero=True)
            await self.finish(probe)
            self.send(_row_description(probe.result) if probe.result else m.NoData())
            return
        portal = self.portals.get(message.name)
        if portal is None:
            raise ProtocolViolation(f"portal {message.name!r} does not exist", code="34000")
        if portal.prepared.statement.kind == "copy":  # a copy stream has no row description
            self.send(m.NoData())
            return
        await self.start(portal)
        portal.described = True
        binary = portal.encode is binary_data_rows
        self.send(_row_description(portal.result, binary) if portal.result else m.NoData())

    # -- running a statement --------------------------------------------------------------------

    async def start(self, portal: Portal, *, limit_zero: bool = False) -> None:
        """Start the portal's statement; its columns are then known (``portal.result``)."""
        statement = portal.prepared.statement
        if self.transaction == "E" and statement.kind != "session":
            raise ProtocolViolation(
                "current transaction is aborted, commands ignored until end of transaction block",
                code="25P02",
            )
        if statement.kind == "session":
            if statement.word == "SHOW":  # a row, described like any result
                name, value = self.settings.run("SHOW", statement.text, self.transaction).show
                batch = pa.record_batch({name: pa.array([value], pa.string())})
                described = columns(batch.schema)
                portal.result = Result.complete(described, [portal.encode(batch, described)], 1)
                portal.tag = "SHOW"
            return
        if not self.server.still_valid(self.client):
            raise ProtocolViolation("the credential of this session was revoked or expired",
                                    code="28000", fatal=True)  # fmt: skip
        self.client.timeout_seconds = self.settings.timeout
        self.client.at = parse_at(self.settings.values["mesh.at"] or None)
        if statement.kind == "catalog":
            portal.result = await self.server.catalog_query(
                self.client, statement, portal, portal.encode
            )
            return
        sql = dialect.to_engine(statement.text, portal.parameters, portal.prepared.types)
        if limit_zero:
            sql = f"SELECT * FROM ({sql}) AS mesh_described LIMIT 0"
        early: list[bool] = []  # a cancel request while the query waits for its slot

        def on_cancel(stop: Any) -> None:  # the query has its engine: cancels reach it
            self.stop_query = stop
            if early:
                stop()

        self.stop_query = lambda: early.append(True)
        try:
            portal.result = await self.server.engines.stream(self.client, sql, on_cancel,
                                                             portal.encode)  # fmt: skip
        finally:
            self.stop_query = self.stop_query if portal.result is not None else None

    async def execute(self, portal: Portal, max_rows: int) -> None:
        statement = portal.prepared.statement
        if statement.kind == "session" and portal.result is None:
            answer = self.settings.run(statement.word, statement.text, self.transaction)
            self.send(m.CommandComplete(tag=answer.tag))
            if answer.transaction is not None:
                self.transaction = answer.transaction
            return
        if portal.result is None:
            raise ProtocolViolation("the portal has no result")
        sent = 0
        while True:
            rows = await portal.result.next_rows()
            if rows is None:
                break
            if max_rows and sent + len(rows) > max_rows:
                take = max_rows - sent
                rows, portal.result.pending = rows[:take], rows[take:]
                self.writer.write(b"".join(rows))
                self.send(m.PortalSuspended())
                return
            sent += len(rows)
            self.writer.write(b"".join(rows))
            await self.writer.drain()
        self.stop_query = None
        self.send(m.CommandComplete(tag=portal.tag or f"SELECT {portal.result.count}"))

    async def finish(self, portal: Portal) -> None:
        """Drain a portal's result without sending it (a Describe's probe)."""
        if portal.result is not None:
            while await portal.result.next_rows() is not None:
                pass

    def cancel(self) -> None:
        if self.stop_query is not None:
            self.stop_query()


def _unless_fatal(exc: Exception, *expected: type[Exception]) -> None:
    """Re-raise an error that ends the session (a fatal one, or the client gone: the server
    ends it); log the others that are a fault of the service, not of the statement."""
    if getattr(exc, "fatal", False) or isinstance(exc, ConnectionError):
        raise exc
    if not isinstance(exc, expected):
        log.exception("statement failed")


def _row_description(result: Result, binary: bool = False) -> m.RowDescription:
    return m.RowDescription(fields=[
        m.FieldDescription(name=c.name, type_oid=c.oid, type_size=c.size,
                           type_modifier=c.modifier, format_code=int(binary))
        for c in result.columns
    ])  # fmt: skip
