"""Warm engines shared by the service's clients, and results streamed from them.

A client's query runs on a :class:`~mesh_platform.query.engine.QuerySession` of its principal,
checked out of a pool for the query and returned after: the session's locked DuckDB connection,
its planned snapshot file lists and its governed views stay warm across clients and queries,
and the SQL guard's cache is the process's. A principal runs at most ``concurrent_queries``
(mesh.yaml ``query``) at once; more wait for a slot.

The engine hands the result to :meth:`Engines.stream`'s worker as Arrow record batches; each
batch is encoded as PostgreSQL rows there and passed to the client's connection through a
bounded queue, so a result of any size holds a few batches in memory, and a slow client slows
its query rather than filling the service's memory.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import weakref
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.products.registry import watch_directory
from mesh_platform.query.audit import AuditLog
from mesh_platform.query.engine import QueryLimitError, QuerySession
from mesh_platform.serve.catalog import Catalogs, PrincipalCatalog
from mesh_platform.serve.identity import Identity
from mesh_platform.serve.results import Column, columns, data_rows
from mesh_platform.settings import ServeSettings

Encoder = Callable[[Any, list[Column]], list[bytes]]
QUEUED_BATCHES = 4  # encoded batches waiting for a client at most, per query
IDLE_SESSIONS = 8  # warm sessions kept per principal
SHAPES_SECONDS = 2.0  # how long a principal's catalog shapes are reused (introspection bursts)


class ClientGoneError(MeshError):
    """The client closed its connection while its result was being sent."""


@dataclass
class Client:
    """What a query needs to know of its connection: who, from where, with which settings."""

    identity: Identity
    address: str
    application: str = ""
    timeout_seconds: float | None = None
    at: Any = None  # time travel of the session (SET mesh.at)
    closed: threading.Event = field(default_factory=threading.Event)

    def audit_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"auth": self.identity.method, "client": self.address}
        if self.application:
            fields["application"] = self.application
        if self.identity.token_id:
            fields["token"] = self.identity.token_id
        return fields


@dataclass(eq=False)  # by identity: the engines keep a weak set of live results
class Result:
    """A running query's result: its columns, then row chunks from ``next_rows``."""

    columns: list[Column]
    queue: asyncio.Queue[Any]
    task: asyncio.Future[Any]
    pending: list[bytes] = field(default_factory=list)
    count: int = 0
    done: bool = False  # its last rows (or its error) were handed to the connection
    closed: threading.Event | None = None  # its client's: set when nobody reads it anymore

    @property
    def unsent(self) -> bool:
        """Rows of it remain for a client still there (a shutdown waits for them)."""
        return not self.done and not (self.closed is not None and self.closed.is_set())

    @classmethod
    def complete(cls, described: list[Column], chunks: list[list[bytes]], count: int) -> Result:
        """A result already computed (a catalog query's few rows)."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for chunk in [*chunks, None]:
            queue.put_nowait(chunk)
        task: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        task.set_result(count)
        return cls(described, queue, task)

    async def next_rows(self) -> list[bytes] | None:
        """The next chunk of encoded rows; None when the result is complete. The query's
        error, if it failed midway, is raised here."""
        if self.pending:
            rows, self.pending = self.pending, []
            return rows
        if self.done:
            return None
        try:
            item = await _next(self.queue, self.task)
        except BaseException:
            self.done = True
            raise
        if item is None:
            self.done = True
            self.count = await self.task
            return None
        return item


def hand_over(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], item: Any, gone: threading.Event
) -> None:
    """Put ``item`` on ``queue`` (the connection's, a bounded one: waits while the client reads
    slowly) from a query thread; ClientGoneError once ``gone`` is set.

    One put, awaited: never retried. A put cancelled after a timeout may already have landed
    (the loop ran it but had not yet reported it: a busy machine), so a retry could send a batch
    twice; waiting on the same put cannot."""
    future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
    while True:
        try:
            future.result(timeout=0.5)
            return
        except TimeoutError:
            if gone.is_set():
                future.cancel()  # if it landed anyway, nobody reads that queue any more
                raise ClientGoneError(
                    "the client disconnected mid-result", fix="nothing to fix on the service"
                ) from None


async def _next(queue: asyncio.Queue[Any], task: asyncio.Future[Any]) -> Any:
    """The next item of ``queue``, or the task's error if it ends without one."""
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    if not queue.empty():
        return queue.get_nowait()
    task.result()  # raises the query's error
    return None


class Engines:
    """The pool of query sessions, by principal; and the catalogs their tools browse."""

    def __init__(self, mesh: Mesh, *, threads: int) -> None:
        self.mesh = mesh
        # the descriptors (grants, masks) are read again when a file changes, not every query
        watch_directory(mesh)
        self.audit = AuditLog(mesh.state_dir / "audit" / "queries.jsonl")
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mesh-serve")
        self.catalogs = Catalogs()
        self._idle: dict[tuple[str, tuple[str, ...]], list[QuerySession]] = defaultdict(list)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._shapes: dict[tuple[str, tuple[str, ...]], tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self.running = 0  # queries on the engine now, or waiting for a slot
        self._results: weakref.WeakSet[Result] = weakref.WeakSet()

    @property
    def busy(self) -> bool:
        """Whether a query runs, or a result is still being sent to its client: a query's
        engine work ends while up to ``QUEUED_BATCHES`` of its rows wait for a slow client, and
        a graceful stop must send those too."""
        return self.running > 0 or any(r.unsent for r in list(self._results))

    # -- sessions ---------------------------------------------------------------------------

    def _checkout(self, client: Client) -> QuerySession:
        key = (client.identity.principal, client.identity.teams)
        with self._lock:
            session = self._idle[key].pop() if self._idle[key] else None
        if session is None:
            session = QuerySession(
                client.identity.principal,
                mesh=self.mesh,
                audit=self.audit,
                member_of=client.identity.teams,
            )
        session.identity = client.audit_fields()
        session.timeout_seconds = client.timeout_seconds
        return session

    def _checkin(self, client: Client, session: QuerySession) -> None:
        key = (client.identity.principal, client.identity.teams)
        with self._lock:
            if len(self._idle[key]) < IDLE_SESSIONS:
                self._idle[key].append(session)
                return
        session.close()

    def _slot(self, client: Client) -> asyncio.Semaphore:
        principal = client.identity.principal
        if principal not in self._slots:
            teams = sorted(client.identity.teams)
            limit = self.mesh.settings.query.for_principal([principal, *teams]).concurrent_queries
            self._slots[principal] = asyncio.Semaphore(limit)
        return self._slots[principal]

    # -- queries ----------------------------------------------------------------------------

    async def stream(
        self,
        client: Client,
        sql: str,
        cancel: Callable[[Callable[[], None]], None],
        encode: Encoder = data_rows,
    ) -> Result:
        """Start ``sql`` (DuckDB dialect, not yet checked: the engine checks it) for
        ``client``; returns once its columns are known. ``cancel`` receives the function that
        stops it (a cancel request); ``encode`` turns each batch into the client's rows."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue(QUEUED_BATCHES)
        slot = self._slot(client)
        with self._lock:
            self.running += 1  # from here on: a query waiting for a slot is one a drain awaits
        try:
            await slot.acquire()
            session = self._checkout(client)
        except BaseException:
            with self._lock:
                self.running -= 1
            raise
        ended = [False]  # under self._lock: a cancel request after the query ended is a no-op

        def stop() -> None:
            # The session goes back to the pool when the query ends and may run another
            # client's query: a late cancel request of this client must not stop that one.
            with self._lock:
                if not ended[0]:
                    session.cancel()

        cancel(stop)

        def put(item: Any) -> None:
            hand_over(loop, queue, item, client.closed)

        def consume(reader: Any, max_rows: int) -> int:
            described = columns(reader.schema)
            put(described)
            count = 0
            for batch in reader:
                count += batch.num_rows
                if count > max_rows:
                    raise QueryLimitError(
                        f"the result has more than {max_rows} rows, the limit of this principal",
                        fix="aggregate, filter or add LIMIT; or ask the platform team for a "
                        "higher max_rows (mesh.yaml: query.principals.<you>.max_rows)",
                    )
                if batch.num_rows:
                    put(encode(batch, described))
            put(None)
            return count

        def run() -> int:
            try:
                return session.stream(sql, consume, at=client.at)
            finally:
                with self._lock:
                    self.running -= 1
                    ended[0] = True
                session.reset_cancel()  # a request that came as the query ended: not the next
                self._checkin(client, session)
                loop.call_soon_threadsafe(slot.release)

        task = loop.run_in_executor(self.executor, run)
        described = await _next(queue, task)
        result = Result(described, queue, task, closed=client.closed)
        self._results.add(result)
        return result

    async def shapes(self, client: Client) -> PrincipalCatalog:
        """The client's principal's catalog database (what it may read, shaped, empty)."""
        loop = asyncio.get_running_loop()
        key = (client.identity.principal, client.identity.teams)
        cached = self._shapes.get(key)
        if cached is None or loop.time() - cached[0] > SHAPES_SECONDS:
            session = self._checkout(client)
            try:
                shapes = await loop.run_in_executor(self.executor, session.readable)
            finally:
                self._checkin(client, session)
            cached = self._shapes[key] = (loop.time(), shapes)
        return self.catalogs.get(key, cached[1])

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            sessions = [s for idle in self._idle.values() for s in idle]
            self._idle.clear()
        for session in sessions:
            session.close()
        self.catalogs.close()


class Service(Protocol):
    """What a connection asks of the service that accepted it (serve.server.Server): the
    protocol layer depends on this shape, not on the service's module."""

    tls_context: ssl.SSLContext | None
    settings: ServeSettings
    engines: Engines

    def cancel(self, process_id: int, secret: bytes) -> None: ...
    def check_login_allowed(self, peer: str, user: str, app: str, *, tls: bool) -> None: ...
    async def authenticate(self, peer: str, user: str, password: str, app: str) -> Identity: ...
    def still_valid(self, client: Client | None) -> bool: ...
    async def catalog_query(
        self, client: Client, statement: Any, portal: Any, encode: Encoder = ...
    ) -> Result: ...
