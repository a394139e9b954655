"""Iceberg storage of the mesh: the catalog, publishing a product, reading one back.

Products are Apache Iceberg tables in a pyiceberg ``SqlCatalog``, one namespace per domain, so
any engine can read them. Writing takes the fast path measured in FIELD-NOTES: DuckDB writes the
Parquet file straight into the table's data folder and pyiceberg registers it (metadata only).
This module does a plain replace of the table's content; the gated write-audit-publish path
builds on it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.exceptions import ValidationError as IcebergValidationError
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.table import Table
from sqlalchemy import event

from mesh_platform.addressing import ProductAddress, quote_ident, quote_literal
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError, ProductNotPublishedError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def open_catalog(mesh: Mesh) -> SqlCatalog:
    """The mesh's SqlCatalog. On sqlite: WAL journal and a busy timeout for concurrent writers."""
    uri = mesh.catalog_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    catalog = SqlCatalog(mesh.settings.catalog.name, uri=uri, warehouse=mesh.warehouse)
    if catalog.engine.dialect.name == "sqlite":

        @event.listens_for(catalog.engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - callback
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        catalog.engine.dispose()  # connections made before the listener get the pragmas too
    return catalog


def ensure_namespace(catalog: SqlCatalog, domain: str) -> None:
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(domain, properties={"mesh.domain": domain})


def _evolve_schema(
    catalog: SqlCatalog, table: Table, address: ProductAddress, arrow_schema: pa.Schema
) -> Table:
    """Add new columns and widen types by name (a no-op when nothing changed).

    Iceberg refuses incompatible changes (long -> string); that is a breaking change of the
    product, reported with the fix instead of pyiceberg's message alone.
    """
    try:
        with table.update_schema() as update:
            update.union_by_name(arrow_schema)
    except IcebergValidationError as exc:
        raise MeshError(
            f"product {address}: its new schema is incompatible with the published table ({exc})",
            fix="keep the column's type (or widen it: int -> bigint, float -> double), or "
            "publish the change as a new major version of the product",
        ) from exc
    return catalog.load_table(address.iceberg_identifier)


def _local_path(location: str) -> Path:
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        raise MeshError(
            f"warehouse location {location!r} is not a local path",
            fix="the embedded default writes to a local warehouse; set catalog.warehouse to a "
            "file:// URI",
        )
    return Path(unquote(parsed.path))


@dataclass(frozen=True)
class PublishResult:
    address: ProductAddress
    snapshot_id: int
    row_count: int
    data_file: str
    metadata_location: str
    seconds: float


def load_product_table(catalog: SqlCatalog, address: ProductAddress) -> Table | None:
    try:
        return catalog.load_table(address.iceberg_identifier)
    except NoSuchTableError:
        return None


def publish_from_duckdb(
    catalog: SqlCatalog,
    address: ProductAddress,
    conn: duckdb.DuckDBPyConnection,
    relation: str,
    *,
    properties: dict[str, str],
) -> PublishResult:
    """Replace the content of ``address``'s Iceberg table with DuckDB relation ``relation``.

    ``relation`` is a validated ``schema.table`` name in ``conn``. The Parquet file is written
    into the table's own data folder, then registered in one Iceberg transaction (delete old
    files + add new), so readers see the old snapshot or the new one, never a mix.
    """
    start = time.perf_counter()
    schema_name, table_name = relation.split(".")
    source = f"{quote_ident(schema_name)}.{quote_ident(table_name)}"
    arrow_schema: pa.Schema = conn.execute(f"SELECT * FROM {source} LIMIT 0").arrow().schema
    ensure_namespace(catalog, address.domain)
    table = load_product_table(catalog, address)
    if table is None:
        table = catalog.create_table(
            address.iceberg_identifier,
            schema=arrow_schema,
            properties={"mesh.address": str(address), "format-version": "2"},
        )
    else:
        table = _evolve_schema(catalog, table, address, arrow_schema)

    data_dir = _local_path(table.location()) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_file = data_dir / f"{uuid.uuid4()}.parquet"
    conn.execute(
        f"COPY (SELECT * FROM {source}) TO {quote_literal(str(data_file))} (FORMAT parquet)"
    )
    row_count = conn.execute(f"SELECT count(*) FROM {source}").fetchone()[0]
    summary = {**properties, "mesh.rows": str(row_count)}
    try:
        with table.transaction() as tx:
            if table.current_snapshot() is not None:
                tx.delete(AlwaysTrue(), snapshot_properties=summary)
            tx.add_files([str(data_file)], snapshot_properties=summary)
    except Exception:
        data_file.unlink(missing_ok=True)  # nothing references it: do not leave an orphan
        raise
    table = catalog.load_table(address.iceberg_identifier)
    snapshot = table.current_snapshot()
    assert snapshot is not None
    return PublishResult(
        address=address,
        snapshot_id=snapshot.snapshot_id,
        row_count=row_count,
        data_file=str(data_file),
        metadata_location=table.metadata_location,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class StagedInput:
    address: ProductAddress
    snapshot_id: int
    row_count: int
    relation: str


def stage_input(
    catalog: SqlCatalog,
    conn: duckdb.DuckDBPyConnection,
    address: ProductAddress,
    *,
    schema: str,
    consumer: str,
) -> StagedInput:
    """Copy the current snapshot of ``address`` into ``schema.<product>`` of ``conn``.

    ``conn`` must have the iceberg extension loaded. The copy pins the snapshot for the
    consumer's whole dbt run.
    """
    table = load_product_table(catalog, address)
    snapshot = table.current_snapshot() if table is not None else None
    if table is None or snapshot is None:
        raise ProductNotPublishedError(
            f"domain '{consumer}' consumes {address}, which has no published snapshot yet",
            fix=f"build the producing domain first: `mesh build --domain {address.domain}` "
            "(`mesh build` orders domains for you)",
        )
    target = f"{quote_ident(schema)}.{quote_ident(address.product)}"
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    conn.execute(
        f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM iceberg_scan(?)",
        [table.metadata_location],
    )
    rows = conn.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
    return StagedInput(address, snapshot.snapshot_id, rows, f"{schema}.{address.product}")
