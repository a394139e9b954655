"""A principal's catalog: what SQL and BI tools see when they browse the service.

Tools introspect on connect (``information_schema.columns``, ``pg_catalog.pg_class``,
``version()``...). Those queries run on a catalog database of their own: an in-memory DuckDB
holding, for each product the principal may read, an *empty* table ``<domain>.<product>`` with
exactly the columns it sees (masked columns with their served types), and nothing else. DuckDB's
own ``information_schema`` and ``pg_catalog`` views then answer with what this principal may
read and nothing more; no catalog query can reach a row, a file or another principal's
products, because the database holds none. It is locked like the query engine (no external
access, configuration locked) and rebuilt when what the principal may read changes.

A few functions PostgreSQL's own tools call in their catalog queries (``pg_get_userbyid``,
``pg_table_is_visible``...) are defined as macros with PostgreSQL's meaning where it applies
(every product is visible, owned by the mesh).
"""

from __future__ import annotations

import threading

import duckdb

from mesh_platform.addressing import ProductAddress, quote_ident
from mesh_platform.duckdb_ext import connect

# PostgreSQL catalog functions that DuckDB lacks, as its tools call them
_MACROS = (
    "CREATE MACRO pg_get_userbyid(role_oid) AS 'mesh'",
    "CREATE MACRO pg_table_is_visible(rel_oid) AS true",
    "CREATE MACRO pg_type_is_visible(type_oid) AS true",
    "CREATE MACRO pg_function_is_visible(fn_oid) AS true",
    "CREATE MACRO pg_encoding_to_char(encoding) AS 'UTF8'",
    "CREATE MACRO pg_get_partkeydef(rel_oid) AS NULL",
    "CREATE MACRO pg_get_statisticsobjdef_columns(oid) AS NULL",
    "CREATE MACRO pg_relation_is_publishable(rel_oid) AS false",
    "CREATE MACRO obj_description(oid, catalog := NULL) AS NULL",
    "CREATE MACRO col_description(table_oid, column_number) AS NULL",
    "CREATE MACRO shobj_description(oid, catalog) AS NULL",
    "CREATE MACRO current_setting(name) AS NULL",
    "CREATE MACRO mesh_regtype(type_oid) AS "
    "(SELECT typname FROM mesh_pg_type() WHERE oid = type_oid)",
    "CREATE MACRO to_regtype(type_name) AS "
    "(SELECT oid FROM mesh_pg_type() WHERE typname = lower(type_name))",
)
VERSION = "PostgreSQL 16.0 (mesh_platform query service over DuckDB)"
# PostgreSQL's built-in types the service sends (src/include/catalog/pg_type.dat): oid, name,
# length, category, array type, receive function. Drivers map result oids through pg_type
# (the ADBC driver by receive function), so the catalog answers with PostgreSQL's own rows.
_TYPES = (
    (16, "bool", 1, "B", 1000, "boolrecv"), (17, "bytea", -1, "U", 1001, "bytearecv"),
    (18, "char", 1, "Z", 1002, "charrecv"), (19, "name", 64, "S", 1003, "namerecv"),
    (20, "int8", 8, "N", 1016, "int8recv"), (21, "int2", 2, "N", 1005, "int2recv"),
    (23, "int4", 4, "N", 1007, "int4recv"), (25, "text", -1, "S", 1009, "textrecv"),
    (26, "oid", 4, "N", 1028, "oidrecv"), (114, "json", -1, "U", 199, "json_recv"),
    (700, "float4", 4, "N", 1021, "float4recv"), (701, "float8", 8, "N", 1022, "float8recv"),
    (1042, "bpchar", -1, "S", 1014, "bpcharrecv"),
    (1043, "varchar", -1, "S", 1015, "varcharrecv"), (1082, "date", 4, "D", 1182, "date_recv"),
    (1083, "time", 8, "D", 1183, "time_recv"), (1114, "timestamp", 8, "D", 1115, "timestamp_recv"),
    (1184, "timestamptz", 8, "D", 1185, "timestamptz_recv"),
    (1186, "interval", 16, "T", 1187, "interval_recv"),
    (1700, "numeric", -1, "N", 1231, "numeric_recv"), (2950, "uuid", 16, "U", 2951, "uuid_recv"),
    (3802, "jsonb", -1, "U", 3807, "jsonb_recv"),
)  # fmt: skip


def _pg_type_macro() -> str:
    rows = []
    for oid, name, length, category, array, receive in _TYPES:
        send = receive.replace("recv", "send")
        rows.append(f"({oid}, '{name}', 11, {length}, 'b', '{category}', ',', 0, 0, {array}, "
                    f"'{receive}', '{send}', 0)")  # fmt: skip
        rows.append(f"({array}, '_{name}', 11, -1, 'b', 'A', ',', 0, {oid}, 0, 'array_recv', "
                    f"'array_send', 0)")  # fmt: skip
    columns = ("oid, typname, typnamespace, typlen, typtype, typcategory, typdelim, typrelid, "
               "typelem, typarray, typreceive, typsend, typbasetype")  # fmt: skip
    return (
        f"CREATE MACRO mesh_pg_type() AS TABLE SELECT * FROM (VALUES {', '.join(rows)}) "
        f"AS t({columns})"
    )


Shapes = dict[ProductAddress, list[tuple[str, str]]]


class PrincipalCatalog:
    """The catalog database of one set of readable shapes (shared by the principal's clients;
    DuckDB connections are used one cursor per query)."""

    def __init__(self, shapes: Shapes) -> None:
        self.shapes = shapes
        self._lock = threading.Lock()
        self._conn = connect()
        try:
            for domain in sorted({a.domain for a in shapes}):
                self._conn.execute(f"CREATE SCHEMA {quote_ident(domain)}")
            for address, columns in shapes.items():
                body = ", ".join(f"{quote_ident(n)} {t}" for n, t in columns) or "mesh_empty INT"
                self._conn.execute(
                    f"CREATE TABLE {quote_ident(address.domain)}.{quote_ident(address.table)} "
                    f"({body})"
                )
            for macro in (_pg_type_macro(), *_MACROS):
                self._conn.execute(macro)
            self._conn.execute(f"CREATE MACRO version() AS '{VERSION}'")
            self._conn.execute("SET enable_external_access = false")
            self._conn.execute("SET lock_configuration = true")
        except Exception:
            self._conn.close()
            raise

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._conn.cursor()

    def close(self) -> None:
        self._conn.close()


class Catalogs:
    """Catalog databases by principal, rebuilt when the principal's readable shapes change."""

    def __init__(self) -> None:
        self._by_key: dict[object, PrincipalCatalog] = {}
        self._lock = threading.Lock()

    def get(self, key: object, shapes: Shapes) -> PrincipalCatalog:
        with self._lock:
            current = self._by_key.get(key)
            if current is not None and current.shapes == shapes:
                return current
            fresh = PrincipalCatalog(shapes)
            self._by_key[key] = fresh  # the replaced one closes when its last cursor goes
        return fresh

    def close(self) -> None:
        with self._lock:
            for catalog in self._by_key.values():
                catalog.close()
            self._by_key.clear()
