"""Reading through the query service: the production profile's read path for people.

In the production profile the query service (``mesh serve``) is the only component that holds
read credentials for the warehouse. A person's ``mesh query``, ``read_product`` and
:func:`open_session` therefore connect to it, as the principal they log in as, with the
credential that proves it::

    MESH_ENDPOINT=postgresql://mesh.example.com:5433/mesh?sslmode=verify-full
    MESH_PRINCIPAL=user:carol
    MESH_TOKEN=mesh_1a2b3c4d5e6f_...          # from `mesh token create user:carol`

The principal is only a claim the service checks against the token: a flag or a variable can
name a principal, never act as one. Results arrive as Arrow through the ADBC PostgreSQL driver
(the service sends a binary copy stream); time travel is the session setting ``mesh.at``.

Where ``MESH_ENDPOINT`` is not set (the local profile, and the platform's own runs, which read
with the service's credentials), :func:`open_session` returns the embedded engine
(:class:`~mesh_platform.query.engine.QuerySession`).
"""

from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from mesh_platform.config import Mesh, load_mesh
from mesh_platform.errors import MeshError
from mesh_platform.query.engine import At, QuerySession

if TYPE_CHECKING:
    import pyarrow as pa

ENDPOINT_ENV = "MESH_ENDPOINT"
TOKEN_ENV = "MESH_TOKEN"


class RemoteQueryError(MeshError):
    """The query service refused or failed a query (its SQLSTATE and message kept)."""


def endpoint() -> str | None:
    return os.environ.get(ENDPOINT_ENV) or None


def _at_setting(at: At) -> str | None:
    if at is None:
        return None
    if isinstance(at, int):
        return str(at)
    if isinstance(at, dt.datetime):
        return at.isoformat()
    raise MeshError(
        "time travel per product (at={address: snapshot}) is not served over the query service",
        fix="pass one snapshot id or one timestamp",
    )


class RemoteSession:
    """Queries of one principal through the query service; the API of ``QuerySession``."""

    def __init__(self, principal: str, *, url: str, token: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise MeshError(
                f"{ENDPOINT_ENV} must be a postgresql:// URL of the query service",
                fix="e.g. postgresql://mesh.example.com:5433/mesh?sslmode=verify-full",
            )
        netloc = f"{quote(principal, safe='')}:{quote(token, safe='')}@{parts.netloc}"
        self._uri = urlunsplit((parts.scheme, netloc, parts.path or "/mesh", parts.query, ""))
        self.principal_id = principal
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            import adbc_driver_postgresql.dbapi as adbc  # heavy: ADBC driver, only when remote

            try:
                self._conn = adbc.connect(self._uri, autocommit=True)
            except Exception as exc:
                raise _remote_error(exc, "cannot log in to the query service") from None
        return self._conn

    def sql(self, sql: str, *, at: At = None) -> pa.Table:
        cursor = self._connection().cursor()
        try:
            setting = _at_setting(at)
            cursor.execute("RESET mesh.at" if setting is None else f"SET mesh.at = '{setting}'")
            cursor.execute(sql)
            return _decimals(cursor.fetch_arrow_table())
        except MeshError:
            raise
        except Exception as exc:
            raise _remote_error(exc, "the query service refused the query") from None
        finally:
            cursor.close()

    def rows(self, sql: str, *, at: At = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        table = self.sql(sql, at=at)
        names = table.column_names
        return names, [tuple(r[n] for n in names) for r in table.to_pylist()]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decimals(table: pa.Table) -> pa.Table:
    """NUMERIC columns as Arrow decimals. The ADBC driver hands PostgreSQL's numeric over as
    text (a numeric's precision is unbounded); the service sends a DECIMAL(p, s) with s digits
    after the point in every value, so the scale is read back from them, losslessly."""
    import pyarrow as pa  # heavy: pyarrow (~0.3 s), loaded with the result it converts
    import pyarrow.compute as pc  # heavy: as above

    for i, field in enumerate(table.schema):
        if (field.metadata or {}).get(b"POSTGRESQL:type") != b"numeric":
            continue
        column = table.column(i)
        sample = next((v for v in column.to_pylist() if v is not None), None)
        if sample is None or not all(c.isdigit() or c in "-." for c in sample):
            continue  # no value to learn the scale from, or NaN
        scale = len(sample.partition(".")[2])
        decimal = pa.decimal128(38, scale)
        table = table.set_column(i, field.with_type(decimal), pc.cast(column, decimal))
    return table


def _remote_error(exc: Exception, what: str) -> MeshError:
    """The service's message and hint as the reader's error (the driver's wrapping dropped)."""
    text = str(exc)
    for marker in ("ERROR:", "FATAL:"):
        if marker in text:
            text = text.split(marker, 1)[1]
    message, _, hint = text.partition("HINT:")
    message = " ".join(message.split("Query was:")[0].split()).split(" . SQLSTATE")[0]
    hint = " ".join(hint.split("Query was:")[0].split()).split(" . SQLSTATE")[0]
    message, hint = message.rstrip(" ."), hint.rstrip(" .")
    return RemoteQueryError(
        f"{what}: {message or type(exc).__name__}",
        fix=hint or f"check {ENDPOINT_ENV}, {TOKEN_ENV} and the principal you log in as",
    )


def open_session(principal: str, *, mesh: Mesh | None = None) -> QuerySession | RemoteSession:
    """The reader's session: through the query service when ``MESH_ENDPOINT`` is set (a token
    in ``MESH_TOKEN`` is then required), else the embedded engine."""
    url = endpoint()
    if url is None:
        return QuerySession(principal, mesh=mesh or load_mesh())
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise MeshError(
            f"{ENDPOINT_ENV} is set but {TOKEN_ENV} is not: the query service needs your token",
            fix="ask a platform operator for one (`mesh token create <you>`) and set MESH_TOKEN",
        )
    return RemoteSession(principal, url=url, token=token)
