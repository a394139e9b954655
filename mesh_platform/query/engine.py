"""Federated SQL across domains, under the reader's grants and masks.

    from mesh_platform.query import engine
    with engine.QuerySession(principal="team:campaigns") as session:
        table = session.sql("SELECT n.region_name, count(*) FROM sales.customers c "
                            "JOIN logistics.nations_v2 n USING (nation_key) GROUP BY 1")

For every query: the SQL is checked on its syntax tree (:mod:`mesh_platform.query.sql`); each
product it names is resolved through the directory and the catalog, the principal's access is
decided (:mod:`mesh_platform.access.grants`: deny by default, columns, rows, masks), and the
product is exposed to the query as a view ``<domain>.<product>`` over the Parquet data files of
one pinned, published snapshot (planned from its Avro manifests), with only the granted columns,
masked and filtered. The user's
SQL then runs against those views alone, so ``SELECT *``, joins, aggregates and exports all see
the same masked, filtered rows.

The DuckDB engine is locked down before any user SQL runs: no file system access but the
exact data files of the snapshots read (``enable_external_access=false`` + ``allowed_paths``),
no extension installation, and ``lock_configuration`` so ``SET`` cannot undo it; the salt and
the file lists are session variables the SQL names, never values in it. A grant's row filter is
a barrier (:meth:`ReadPlan.select_sql`). Every query, allowed or not, is written to the audit
log (:mod:`mesh_platform.query.audit`), once before it runs and once with its outcome.

Longer than 450 lines because it is the one enforcement point of every read (queries, Python
products' inputs, cross-domain staging): the session's lock-down, resolution, plans, limits and
audit are reviewed together, and splitting them would let a read path skip one.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb

from mesh_platform.access.grants import ReadPlan, plan_read
from mesh_platform.access.masking import SALTED, bind_salt
from mesh_platform.access.principals import AccessDeniedError, Principal, load_principals
from mesh_platform.addressing import ProductAddress, quote_ident, quote_literal
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.domain import list_domain_names
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import (
    LOST_DATA_FILE,
    MeshError,
    disk_full,
    is_disk_full,
    one_line,
    printable,
    runbook,
)
from mesh_platform.products.registry import Directory, load_directory
from mesh_platform.query.audit import AuditLog
from mesh_platform.query.sql import QueryRefusedError, check_query, redact
from mesh_platform.settings import QueryLimits
from mesh_platform.storage.metadata import Catalog, TableState, data_files, scan_sql
from mesh_platform.storage.warehouse import configure_duckdb, is_remote, local_path

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

At = int | dt.datetime | Mapping[str, int] | None


FILE_LISTS_KEPT = 256  # snapshots whose data-file list a session keeps (planned from manifests)
STREAM_BATCH_ROWS = 16_384  # rows per batch a streamed result is handed on in
PATHS_KEPT = 20_000  # data files a session's query connection may keep allowed
_POLL_SECONDS = 0.05  # how often the waiting thread checks for the timeout (Ctrl-C is immediate)
_STOP_GRACE_SECONDS = 5.0  # how long an interrupted query may take to stop before it is left


class QueryLimitError(MeshError):
    """A query ran longer, or returned more rows, than its principal's limits allow."""


class QueryCancelledError(MeshError):
    """The reader cancelled the query (Ctrl-C)."""


class UnreadableDataError(MeshError):
    """A data file of a product's pinned snapshot is missing or corrupt."""


@dataclass(frozen=True)
class ReadProduct:
    plan: ReadPlan
    state: TableState
    snapshot_id: int


def parse_at(value: str | None) -> int | dt.datetime | None:
    """``--at``: a snapshot id (digits) or an ISO timestamp (UTC when no zone is given)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise MeshError(
            f"--at {value!r} is neither a snapshot id nor a timestamp",
            fix="pass a snapshot id (digits) or an ISO time, e.g. 2026-11-24T18:00:00+00:00",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _pinned(address: ProductAddress, state: TableState, at: At) -> int:
    if isinstance(at, Mapping):
        snapshot_id = at.get(str(address))
        return state.snapshot(snapshot_id).snapshot_id
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            raise MeshError(
                f"at={at.isoformat()} has no time zone", fix="pass an aware datetime (UTC)"
            )
        return state.snapshot(as_of_ms=int(at.timestamp() * 1000)).snapshot_id
    return state.snapshot(at).snapshot_id


def _variable(kind: str, address: ProductAddress) -> str:
    return f"mesh_{kind}_{address.domain}__{address.table}"


def scan_relation(conn: duckdb.DuckDBPyConnection, item: ReadProduct, files: list[str]) -> str:
    """A relation over the pinned snapshot's data files. The file list is bound to a session
    variable (never written into SQL): no view definition or statement text carries a path."""
    variable = _variable("files", item.plan.address)
    if files:
        conn.execute(f"SET VARIABLE {variable} = ?", [files])
    columns = item.state.snapshot(item.snapshot_id).columns
    listing = f"getvariable({quote_literal(variable)})"
    return scan_sql(files, item.state, columns, listing=listing)


def governed_source(conn: duckdb.DuckDBPyConnection, item: ReadProduct, salt: str | None) -> str:
    """SQL of what the plan's principal reads of one product at its pinned snapshot; binds the
    salt and the file list to ``conn`` (the SQL names neither)."""
    snapshot = item.state.snapshot(item.snapshot_id)
    files = data_files(conn, item.state, snapshot)
    bind_salt(conn, salt)
    return item.plan.select_sql(scan_relation(conn, item, files))


class QuerySession:
    """Queries of one principal. Grants, principals and descriptors are re-read on every query
    (a revoked or expired grant stops working on the next one); the locked DuckDB connection is
    kept while the tables it may read stay the same."""

    def __init__(
        self,
        principal: str,
        *,
        mesh: Mesh | None = None,
        directory: Directory | None = None,
        audit: AuditLog | None = None,
        threads: int | None = None,
        identity: Mapping[str, Any] | None = None,
        member_of: tuple[str, ...] = (),
    ) -> None:
        self.mesh = mesh or load_mesh()
        self.principal_id = principal
        # How the principal was established, on every audit line: in-process callers name
        # the principal themselves (impersonation: trying grants); the query service passes
        # the authenticated identity (method, client address, application).
        self.identity = dict(identity) if identity is not None else {"auth": "impersonation"}
        self.member_of = member_of  # memberships an identity provider vouches for
        self.timeout_seconds: float | None = None  # a client's statement timeout (shorter wins)
        self._cancelled = threading.Event()
        self._directory = directory
        self.catalog = Catalog(self.mesh)
        self.audit = audit or AuditLog(self.mesh.state_dir / "audit" / "queries.jsonl")
        self.threads = threads
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._allowed: frozenset[str] = frozenset()
        self._salt: str | None = None
        self.last_snapshots: dict[str, int] = {}  # address -> snapshot read by the last query
        # snapshot -> its data files; bounded: a long-lived session under continuous
        # publication would otherwise keep every snapshot it ever read
        self._files: OrderedDict[tuple[str, int], list[str]] = OrderedDict()
        self._views: dict[tuple[str, str], str] = {}  # (domain, table) -> SQL of its view
        self.limits: QueryLimits | None = None
        self._settings: tuple[int | None, str] | None = None  # the connection's (threads, memory)
        self._plan_conn: duckdb.DuckDBPyConnection | None = None

    # -- access -----------------------------------------------------------------------------

    def directory(self) -> Directory:
        return self._directory if self._directory is not None else load_directory(self.mesh)

    def principal(self) -> Principal:
        """The session's principal, canonical (``domain:sales`` and `` sales`` are ``sales``),
        re-read with principals.yaml on every query; its query limits with it."""

        principals = load_principals(self.mesh.root, set(list_domain_names(self.mesh)))
        principal = principals.resolve(self.principal_id, member_of=self.member_of)
        acts_as = [principal.id, *sorted(principal.acts_as - {principal.id})]
        self.limits = self.mesh.settings.query.for_principal(acts_as)
        return principal

    def resolve(
        self,
        addresses: tuple[ProductAddress, ...],
        at: At = None,
        *,
        principal: Principal | None = None,
    ) -> list[ReadProduct]:
        """Decide access to each product (all refusals are raised before anything is read);
        ``principal``: this query's, if already resolved (else read from principals.yaml)."""
        if isinstance(at, int) and len(addresses) != 1:
            raise MeshError(
                f"a snapshot id pins one product, but the query reads {len(addresses)}",
                fix="pass --at TIMESTAMP to travel every product, or at={address: snapshot} "
                "in Python",
            )
        principal = principal or self.principal()
        directory = self.directory()
        descriptors = [directory.get(a) for a in addresses]
        today = dt.date.today()
        read = []
        for address, descriptor in zip(addresses, descriptors, strict=True):
            if not principal.domain_member(descriptor.domain):
                # Decide on the descriptor alone first: no table state for a refused reader.
                plan_read(principal, descriptor, stored_columns=(), today=today)
            state = self.catalog.table_state(address)
            snapshot_id = _pinned(address, state, at)
            snapshot = state.snapshot(snapshot_id)
            plan = plan_read(
                principal,
                descriptor,
                stored_columns=snapshot.columns,
                published=snapshot.classification(),
                today=today,
            )
            read.append(ReadProduct(plan, state, snapshot_id))
        return read

    # -- engine -----------------------------------------------------------------------------

    def _planner(self) -> duckdb.DuckDBPyConnection:
        """The connection that reads Avro manifests to plan snapshots' data files. User SQL
        never runs on it, so the query connection can be limited to the data files alone."""
        if self._plan_conn is None:
            conn = connect(extensions=("avro",))
            try:
                configure_duckdb(conn, dict(self.catalog.storage))  # s3:// warehouse: httpfs
            except Exception:
                conn.close()
                raise
            self._plan_conn = conn
        return self._plan_conn

    def _connection(self, files: set[str]) -> duckdb.DuckDBPyConnection:
        """The locked connection user SQL runs on: external access off except the exact data
        files of the snapshots it reads (no folder, so no glob, no other snapshot's or rejected
        batch's file, no metadata), configuration locked. Rebuilt when a query needs a file it
        was not opened for."""
        limits = self.limits or self.mesh.settings.query.defaults
        threads = self.threads or limits.threads  # None: DuckDB's default, every core
        settings = (threads, limits.memory_limit)
        if self._conn is not None and files <= self._allowed and self._settings == settings:
            return self._conn

        allowed = frozenset(files | self._allowed)  # queries alternating products: one connection
        if len(allowed) > PATHS_KEPT:
            allowed = frozenset(files)
        self._close_query_connection()
        conn = connect()
        try:
            configure_duckdb(conn, dict(self.catalog.storage))  # s3:// warehouse: httpfs
            if threads:
                conn.execute(f"SET threads = {int(threads)}")
            conn.execute(f"SET memory_limit = {quote_literal(limits.memory_limit)}")
            paths = ", ".join(quote_literal(f) for f in sorted(allowed))
            conn.execute(f"SET allowed_paths = [{paths}]")
            conn.execute("SET allowed_directories = []")
            conn.execute("SET parquet_metadata_cache = true")
            conn.execute("SET enable_external_access = false")
            conn.execute("SET lock_configuration = true")
        except Exception:
            conn.close()
            raise
        self._conn, self._allowed, self._settings = conn, allowed, settings
        return conn

    def _expose(self, conn: duckdb.DuckDBPyConnection, item: ReadProduct) -> None:
        """(Re)create the view ``<domain>.<product>`` the user's SQL reads, if it changed. The
        view names session variables for the files and the salt, never their values."""
        domain, table = item.plan.address.domain, item.plan.address.table
        source = item.plan.select_sql(scan_relation(conn, item, self._files_of(item)))
        if self._views.get((domain, table)) == source:
            return
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(domain)}")
        conn.execute(
            f"CREATE OR REPLACE VIEW {quote_ident(domain)}.{quote_ident(table)} AS {source}"
        )
        self._views[(domain, table)] = source

    def _files_of(self, item: ReadProduct) -> list[str]:
        """The pinned snapshot's data files, planned once per snapshot in a session."""
        key = (item.state.metadata_path, item.snapshot_id)
        snapshot = item.state.snapshot(item.snapshot_id)
        if key not in self._files:
            self._files[key] = data_files(self._planner(), item.state, snapshot)
            while len(self._files) > FILE_LISTS_KEPT:
                self._files.popitem(last=False)
        self._files.move_to_end(key)
        return self._files[key]

    def readable(self) -> dict[ProductAddress, list[tuple[str, str]]]:
        """Every published product this principal may read, with the columns it sees and their
        DuckDB types (masked columns as served): what a client's catalog browser shows. Reads
        no rows: each product's governed view is described, never run."""
        principal = self.principal()
        directory = self.directory()
        read = []
        for key in sorted(directory.descriptors):
            try:
                read += self.resolve((ProductAddress.parse(key),), principal=principal)
            except MeshError:  # not granted, not published, unreadable: not shown
                continue
        conn = self._connection({f for r in read for f in self._files_of(r)})
        bind_salt(conn, self.salt_for([r.plan for r in read]))
        shapes = {}
        for item in read:
            self._expose(conn, item)
            domain, table = item.plan.address.domain, item.plan.address.table
            described = conn.execute(f"DESCRIBE {quote_ident(domain)}.{quote_ident(table)}")
            shapes[item.plan.address] = [(row[0], row[1]) for row in described.fetchall()]
        return shapes

    def salt_for(self, plans: list[ReadPlan]) -> str | None:
        if self._salt is None and any(rule in SALTED for p in plans for rule in p.masks.values()):
            self._salt = self.mesh.pii_salt()
        return self._salt

    def sql(self, sql: str, *, at: At = None) -> pa.Table:
        """Run one query as the session's principal; the result as an Arrow table."""

        def fetch(cursor: Any, max_rows: int) -> pa.Table:
            # heavy: pyarrow (~0.3 s), kept off the import path of light commands
            import pyarrow as pa

            reader = cursor.to_arrow_reader(min(max_rows + 1, 1_000_000))
            batches, count = [], 0
            for batch in reader:
                batches.append(batch)
                count += batch.num_rows
                _check_rows(count, max_rows)
            return pa.Table.from_batches(batches, schema=reader.schema)

        return self._run(sql, at, fetch)

    def rows(self, sql: str, *, at: At = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one query; column names and Python rows (no pyarrow import: the CLI's path)."""

        def fetch(cursor: Any, max_rows: int) -> tuple[list[str], list[tuple[Any, ...]]]:
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchmany(max_rows + 1)
            _check_rows(len(rows), max_rows)
            return names, rows

        return self._run(sql, at, fetch)

    def stream(self, sql: str, consume: Any, *, at: At = None) -> Any:
        """Run one query and hand its result to ``consume(reader, max_rows)`` in the query's
        worker thread (a DuckDB Arrow record-batch reader): the query service streams batches
        to its client with bounded memory, under the same timeout, cancel and audit as
        :meth:`sql`. ``consume`` returns the number of rows it passed on."""

        def fetch(cursor: Any, max_rows: int) -> int:
            return consume(cursor.to_arrow_reader(STREAM_BATCH_ROWS), max_rows)

        return self._run(sql, at, fetch)

    def cancel(self) -> None:
        """Stop the running query (a client's cancel request); it ends as cancelled. A request
        that comes while the query is still being planned stops it as soon as it runs; one that
        comes when no query runs stops the next, unless :meth:`reset_cancel` forgets it."""
        self._cancelled.set()

    def reset_cancel(self) -> None:
        """Forget a cancel request no query consumed (it came after the query ended)."""
        self._cancelled.clear()

    def _run(self, sql: str, at: At, fetch: Any) -> Any:
        start = time.perf_counter()
        entry: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "principal": self.principal_id,
            **self.identity,
            "query": None,
            "products": [],
        }
        started = False
        read: list[ReadProduct] = []
        stage = "prepared"  # what failed: the query's preparation, or the user's SQL running
        try:
            principal = self.principal()
            if principal.id != self.principal_id:  # logged under the canonical id, alias kept
                entry["principal"], entry["requested_as"] = principal.id, self.principal_id
            checked = check_query(sql)
            entry["query"] = checked.redacted
            entry["products"] = [{"address": str(a)} for a in checked.addresses]
            read = self.resolve(checked.addresses, at, principal=principal)
            entry["products"] = [
                {
                    "address": str(r.plan.address),
                    "snapshot_id": r.snapshot_id,
                    "masked": sorted(r.plan.masks),
                    "row_filter": r.plan.row_filter is not None,
                    "owner": r.plan.owner,
                }
                for r in read
            ]
            self.last_snapshots = {str(r.plan.address): r.snapshot_id for r in read}
            limits = self.limits or self.mesh.settings.query.defaults
            files = {f for r in read for f in self._files_of(r)}
            conn = self._connection(files)
            bind_salt(conn, self.salt_for([r.plan for r in read]))
            for item in read:
                self._expose(conn, item)
            # On record before it runs: a query killed mid-way (or the process) leaves its line.
            self._record({**entry, "status": "started"}, start)
            started = True
            stage = "run"
            result = self._execute(conn, checked.sql, fetch, limits)
        except (AccessDeniedError, QueryRefusedError) as exc:
            if entry["query"] is None:  # refused before it was checked: its tokens, redacted
                entry["query"] = redact(sql)
            entry["status"] = "denied" if isinstance(exc, AccessDeniedError) else "refused"
            entry["reason"] = exc.what
            self._record(entry, start)
            raise
        except (QueryLimitError, QueryCancelledError) as exc:
            entry["status"] = "cancelled" if isinstance(exc, QueryCancelledError) else "limited"
            entry["reason"] = exc.what
            self._record(entry, start)
            raise
        except MeshError as exc:
            entry["status"] = "failed"
            entry["reason"] = exc.what
            self._record(entry, start)
            raise
        except Exception as exc:  # DuckDB: a wrong column, a type error... (message not kept)
            entry["status"] = "failed"
            entry["reason"] = type(exc).__name__
            error = self._explain(exc, read, stage)
            if not isinstance(error, QueryFailedError):
                entry["reason"] += f": {type(error).__name__}"
            self._record(entry, start)
            raise error from None
        except BaseException:  # KeyboardInterrupt outside the query, SystemExit...
            if started:
                entry["status"] = "cancelled"
                self._record(entry, start)
            raise
        entry["status"] = "ok"
        entry["rows"] = _row_count(result)
        self._record(entry, start)
        return result

    def _explain(self, exc: Exception, read: list[ReadProduct], stage: str) -> MeshError:
        """What an unexpected exception of a query means for its reader: a full disk (DuckDB
        spills), a data file of a product missing or corrupt (named by its path in DuckDB's
        message), an error of the platform's own preparation, or the user's SQL."""
        if is_disk_full(exc):
            return disk_full(exc, self.mesh.state_dir, doing="the query")

        message = str(exc)
        # a file DuckDB could not open (missing: it globs the name, which the lock-down refuses)
        # or read (truncated, not Parquet), named by its path
        unreadable = (duckdb.IOException, duckdb.InvalidInputException, duckdb.PermissionException)
        for item in read if isinstance(exc, unreadable) else ():
            if _names_file_of(message, item.state.location):
                product = item.plan.address
                return UnreadableDataError(
                    f"product {product}: a data file of its snapshot {item.snapshot_id} is "
                    f"missing or corrupt ({one_line(message.splitlines()[0])[:400]})",
                    fix=f"republish it from its sources: `mesh build --full-refresh --product "
                    f"{product}`; or roll it back to its last readable snapshot: `mesh repair "
                    f"--product {product}` (see {runbook(LOST_DATA_FILE)})",
                )
        if stage != "run":
            return MeshError(
                f"the query could not be prepared ({type(exc).__name__}: "
                f"{printable(message.splitlines()[0] if message else '')})",
                fix="this is a fault of the platform, not of the SQL: retry; if it persists, "
                "report it with the output of `mesh --debug query ...`",
            )
        first = message.splitlines()[0] if message else type(exc).__name__
        return QueryFailedError(
            f"query failed: {printable(first)}",
            fix="correct the SQL; `mesh products --as <principal>` lists the columns you can read",
        )

    def _execute(
        self, conn: duckdb.DuckDBPyConnection, sql: str, fetch: Any, limits: QueryLimits
    ) -> Any:
        """Run ``sql`` in a worker thread while this thread waits: the timeout and Ctrl-C
        (KeyboardInterrupt reaches the waiting thread) both interrupt DuckDB, which stops the
        query and frees its memory."""
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = fetch(conn.execute(sql), limits.max_rows)
            except BaseException as exc:  # handed to the waiting thread
                outcome["error"] = exc

        worker = threading.Thread(target=work, name="mesh-query", daemon=True)
        timeout = min(limits.timeout_seconds, self.timeout_seconds or limits.timeout_seconds)
        deadline = time.monotonic() + timeout
        cancelled = QueryCancelledError(
            "the query was cancelled by its client", fix="run it again when needed"
        )
        reason: MeshError | None = None
        try:
            if self._cancelled.is_set():  # a request while it was planned: it does not run
                reason = cancelled
            else:
                worker.start()
            while reason is None and worker.is_alive():
                worker.join(_POLL_SECONDS)
                if not worker.is_alive():
                    break
                if self._cancelled.is_set():
                    reason = cancelled
                elif time.monotonic() > deadline:
                    reason = QueryLimitError(
                        f"the query ran longer than {timeout:g} s and was cancelled",
                        fix="narrow it (filters, aggregates, LIMIT), or ask the platform team "
                        "for a longer timeout (mesh.yaml: query.principals.<you>.timeout_seconds)",
                    )
                if reason is not None:
                    self._stop(conn, worker)
                    break
        except KeyboardInterrupt:
            self._stop(conn, worker)
            raise QueryCancelledError(
                "the query was cancelled (Ctrl-C)", fix="run it again when needed"
            ) from None
        finally:
            self._cancelled.clear()  # consumed by this query, whatever its end
        if reason is not None:
            raise reason
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _stop(self, conn: duckdb.DuckDBPyConnection, worker: threading.Thread) -> None:
        """Interrupt the running query; DuckDB acts on it between batches of rows. One long
        call on one value may not see it: after a grace period the connection is abandoned to
        the (daemon) worker, so the caller gets its answer in bounded time."""
        conn.interrupt()
        worker.join(_STOP_GRACE_SECONDS)
        if worker.is_alive() and conn is self._conn:
            self._views.clear()
            self._conn, self._allowed = None, frozenset()

    def _record(self, entry: dict[str, Any], start: float) -> None:
        entry["duration_ms"] = round((time.perf_counter() - start) * 1000, 1)
        self.audit.record(entry)

    def _close_query_connection(self) -> None:
        self._views.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn, self._allowed = None, frozenset()

    def close(self) -> None:
        self.catalog.close()
        self._close_query_connection()
        if self._plan_conn is not None:
            self._plan_conn.close()
            self._plan_conn = None

    def __enter__(self) -> QuerySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QueryFailedError(MeshError):
    """The user's SQL failed in DuckDB (a wrong column, a type error...)."""


def _names_file_of(message: str, location: str) -> bool:
    """Whether DuckDB's ``message`` names a file in the table folder ``location``."""

    folder = location if is_remote(location) else str(local_path(location))
    return f"{folder.rstrip('/')}/" in message


def _row_count(result: Any) -> int:
    if isinstance(result, int):  # streamed: the rows passed on
        return result
    return result.num_rows if hasattr(result, "num_rows") else len(result[1])


def _check_rows(count: int, max_rows: int) -> None:
    if count > max_rows:
        raise QueryLimitError(
            f"the result has more than {max_rows} rows, the limit of this principal",
            fix="aggregate, filter or add LIMIT; or ask the platform team for a higher "
            "max_rows (mesh.yaml: query.principals.<you>.max_rows)",
        )


def query(sql: str, *, as_: str, at: At = None, mesh: Mesh | None = None) -> pa.Table:
    """Run one federated query as principal ``as_``; the result as Arrow."""
    with QuerySession(as_, mesh=mesh) as session:
        return session.sql(sql, at=at)
