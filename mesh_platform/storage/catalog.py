"""The mesh's Iceberg catalog: a pyiceberg ``SqlCatalog`` (sqlite in the state dir, or
PostgreSQL in production), one namespace per domain, and its row of each product's table.

pyiceberg and SQLAlchemy are imported inside the functions: the query path's reader of table
metadata (:mod:`mesh_platform.storage.metadata`) falls back to this module on catalogs other
than sqlite and PostgreSQL, and must not pay pyiceberg's ~3 s import on every ``mesh query``;
nor must a command that only names :func:`open_catalog`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh, make_private_dir, private_umask
from mesh_platform.errors import UnreadableMetadataError, catalog_unavailable, one_line
from mesh_platform.storage import preflight, warehouse
from mesh_platform.urls import redact

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table

SQLITE_BUSY_TIMEOUT_MS = 30_000


def open_catalog(mesh: Mesh) -> SqlCatalog:
    """The mesh's SqlCatalog. On sqlite: WAL journal and a busy timeout for concurrent writers.
    Production profile: PostgreSQL and the object store are checked first (storage.preflight).

    Every writer of tables comes through here: the process's files are made owner-only from
    now on (the sqlite catalog, its WAL, the local warehouse's data, manifests and metadata),
    whether or not the process set up the state dir itself."""
    from sqlalchemy import event  # heavy: SQLAlchemy (~0.8 s), pyiceberg's catalog driver
    from sqlalchemy.exc import SQLAlchemyError

    private_umask()
    preflight.check(mesh)
    uri = mesh.catalog_uri
    try:
        if uri.startswith("sqlite:///"):
            make_private_dir(Path(uri.removeprefix("sqlite:///")).parent)
        catalog = _sql_catalog(
            mesh.settings.catalog.name, uri, mesh.warehouse, warehouse.s3_properties(mesh)
        )
    except (SQLAlchemyError, OSError) as exc:  # locked, disk full, not a database, no folder
        raise catalog_unavailable(redact(uri), exc, state_dir=mesh.state_dir) from exc
    if catalog.engine.dialect.name == "sqlite":

        @event.listens_for(catalog.engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - callback
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        catalog.engine.dispose()  # connections made before the listener get the pragmas too
    return catalog


def _sql_catalog(
    name: str, uri: str, location: str, properties: Mapping[str, str], attempts: int = 5
) -> SqlCatalog:
    """SqlCatalog, tolerating another process creating the catalog tables at the same moment
    (pyiceberg's CREATE TABLE of its own tables is not idempotent under a race: sqlite says
    OperationalError, PostgreSQL DuplicateTable or a unique violation of its type catalog)."""
    from pyiceberg.catalog.sql import SqlCatalog  # heavy: pyiceberg (~3 s)
    from sqlalchemy.exc import DBAPIError  # heavy: SQLAlchemy

    for attempt in range(attempts):
        try:
            return SqlCatalog(name, uri=uri, warehouse=location, **properties)
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def ensure_namespace(catalog: SqlCatalog, domain: str) -> None:
    from pyiceberg.exceptions import NamespaceAlreadyExistsError  # heavy: pyiceberg
    from sqlalchemy.exc import IntegrityError  # heavy: SQLAlchemy (~0.4 s)

    # Two first publishers can race: the loser sees either error.
    with contextlib.suppress(NamespaceAlreadyExistsError, IntegrityError):
        catalog.create_namespace(domain, properties={"mesh.domain": domain})


def load_product_table(catalog: SqlCatalog, address: ProductAddress) -> Table | None:
    """The product's table, None if the catalog has no such table (never published). A catalog
    that cannot be read is a CatalogUnavailableError, a current metadata file that cannot be
    loaded an UnreadableMetadataError naming it: neither ever reads as "not published"."""
    from pyiceberg.exceptions import NoSuchTableError  # heavy: pyiceberg
    from sqlalchemy.exc import SQLAlchemyError  # heavy: SQLAlchemy (~0.4 s)

    try:
        return catalog.load_table(address.iceberg_identifier)
    except NoSuchTableError:
        return None
    except SQLAlchemyError as exc:
        raise catalog_unavailable(
            catalog.engine.url.render_as_string(hide_password=True), exc
        ) from exc
    except (ValueError, KeyError, TypeError, OSError) as exc:  # JSON, pydantic, missing file
        location = _row_location(catalog, address)
        raise UnreadableMetadataError(
            str(address),
            f"its current metadata file {location} could not be loaded ({one_line(exc)[:300]})",
            file=location,
        ) from exc


def is_concurrent_commit(exc: Exception) -> bool:
    """A commit lost to a concurrent writer. pyiceberg 0.12 reports a branch write that lost
    the race as a ValueError about sequence numbers (its requirements only guard the branch,
    which is ours alone), not as CommitFailedException (measured with 4 writers)."""
    from pyiceberg.exceptions import CommitFailedException  # heavy: pyiceberg

    return isinstance(exc, CommitFailedException) or (
        isinstance(exc, ValueError) and "older than last sequence number" in str(exc)
    )


@dataclass(frozen=True)
class CatalogRow:
    """A table's catalog row: where readers resolve it."""

    metadata_location: str | None
    previous_metadata_location: str | None


def catalog_row(catalog: SqlCatalog, address: ProductAddress) -> CatalogRow | None:
    """The product's row of the catalog, read directly (pyiceberg keeps only the metadata
    location); None: the catalog has no such table. A failure to read the catalog raises
    SQLAlchemyError: each caller says what it was doing."""
    from pyiceberg.catalog.sql import IcebergTables  # heavy: pyiceberg
    from sqlalchemy import select  # heavy: SQLAlchemy
    from sqlalchemy.orm import Session

    namespace, table = address.iceberg_identifier
    with Session(catalog.engine) as session:
        found = session.execute(
            select(IcebergTables.metadata_location, IcebergTables.previous_metadata_location).where(
                IcebergTables.catalog_name == catalog.name,
                IcebergTables.table_namespace == namespace,
                IcebergTables.table_name == table,
            )
        ).first()
    return CatalogRow(found[0], found[1]) if found else None


def _row_location(catalog: SqlCatalog, address: ProductAddress) -> str:
    """The metadata location the catalog row points at (to name it in an error)."""
    from sqlalchemy.exc import SQLAlchemyError  # heavy: SQLAlchemy

    try:
        row = catalog_row(catalog, address)
    except SQLAlchemyError:
        row = None
    found = row.metadata_location if row is not None else None
    return found or "(unknown: the catalog row could not be read)"
