r"""A principal's catalog: what SQL and BI tools see when they browse the service.

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
(every product is visible, owned by the mesh). Where DuckDB's ``pg_catalog`` differs from
PostgreSQL's in what tools rely on (``pg_attribute`` types columns by DuckDB's type ids, not
the oids results are sent with; ``pg_class`` lacks columns psql's ``\d`` reads; triggers,
policies and publications do not exist), the relation is answered by a table macro of this
database, ``mesh_<relation>()``, which :mod:`mesh_platform.serve.dialect` substitutes.
"""

from __future__ import annotations

import threading

import duckdb

from mesh_platform.addressing import ProductAddress, quote_ident
from mesh_platform.duckdb_ext import connect
from mesh_platform.serve.dialect import SHADOWED_RELATIONS

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
    "CREATE MACRO pg_get_serial_sequence(table_name, column_name) AS NULL::VARCHAR",
    "CREATE MACRO array_upper(list, dimension) AS CASE WHEN dimension = 1 THEN len(list) END",
    "CREATE MACRO pg_get_expr(node, relation) AS node::VARCHAR, "
    "(node, relation, pretty) AS node::VARCHAR",
    "CREATE MACRO mesh_regtype(type_oid) AS "
    "(SELECT typname FROM mesh_pg_type() WHERE oid = type_oid)",
    "CREATE MACRO to_regtype(type_name) AS "
    "(SELECT oid FROM mesh_pg_type() WHERE typname = lower(type_name))",
    "CREATE MACRO mesh_regtype_oid(type_name) AS to_regtype(type_name)",
    "CREATE MACRO mesh_regclass(rel_oid) AS (SELECT n.nspname || '.' || c.relname "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.oid = rel_oid)",
    "CREATE MACRO mesh_regclass_oid(rel_name) AS (SELECT c.oid FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname || '.' || c.relname = rel_name OR "
    "(c.relname = rel_name AND n.nspname = 'main'))",
    "CREATE MACRO mesh_regnamespace(nsp_oid) AS "
    "(SELECT nspname FROM pg_catalog.pg_namespace WHERE oid = nsp_oid)",
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


# How PostgreSQL's format_type() names a type (the typname otherwise)
_FORMATTED = {16: "boolean", 20: "bigint", 21: "smallint", 23: "integer", 700: "real",
              701: "double precision", 1042: "character", 1043: "character varying",
              1083: "time without time zone", 1114: "timestamp without time zone",
              1184: "timestamp with time zone"}  # fmt: skip
# A DuckDB column type's PostgreSQL type oid: the one its values are sent as (serve/results.py)
_TYPE_OID = """CASE
    WHEN t = 'BOOLEAN' THEN 16 WHEN t IN ('TINYINT', 'SMALLINT') THEN 21
    WHEN t IN ('INTEGER', 'UTINYINT') THEN 23 WHEN t IN ('BIGINT', 'USMALLINT') THEN 20
    WHEN t = 'FLOAT' THEN 700 WHEN t = 'DOUBLE' THEN 701
    WHEN t LIKE 'DECIMAL%' OR t IN ('HUGEINT', 'UHUGEINT', 'UINTEGER', 'UBIGINT') THEN 1700
    WHEN t = 'DATE' THEN 1082 WHEN t = 'TIME' THEN 1083 WHEN t = 'INTERVAL' THEN 1186
    WHEN t = 'TIMESTAMP WITH TIME ZONE' THEN 1184 WHEN t LIKE 'TIMESTAMP%' THEN 1114
    WHEN t = 'BLOB' THEN 17 WHEN t = 'UUID' THEN 2950 WHEN t = 'VARCHAR' THEN 25
    WHEN t LIKE '%]' OR t SIMILAR TO '(STRUCT|MAP|UNION)\\(.*' THEN 114 ELSE 25 END"""
# Relations of pg_catalog the catalog answers itself (dialect.SHADOWED_RELATIONS): DuckDB's
# pg_class lacks columns psql reads, its pg_attribute types columns by DuckDB's own type ids
# (not PostgreSQL's oids, which pg_type and every result carry); the others DuckDB lacks and a
# catalog of plain tables has none of (triggers, policies, publications, inheritance).
_SHADOWS = {
    "pg_class": "SELECT * REPLACE (false AS relhastriggers, 'd' AS relreplident, "
    "NULL::VARCHAR[] AS reloptions), "
    "false AS relforcerowsecurity FROM pg_catalog.pg_class",
    "pg_attribute": "SELECT a.* REPLACE (mesh_type_oid(c.data_type) AS atttypid, "
    "CASE WHEN c.data_type LIKE 'DECIMAL(%' THEN "
    "((c.numeric_precision << 16) | c.numeric_scale) + 4 ELSE -1 END AS atttypmod) "
    "FROM pg_catalog.pg_attribute a LEFT JOIN duckdb_columns() c "
    "ON c.table_oid = a.attrelid AND c.column_index = a.attnum",
    "pg_database": "SELECT 0::BIGINT AS oid, 'mesh' AS datname, 0::BIGINT AS datdba, "
    "6 AS encoding, 'c' AS datlocprovider, false AS datistemplate, true AS datallowconn, "
    "-1 AS datconnlimit, 0::BIGINT AS dattablespace, 'C.UTF-8' AS datcollate, "
    "'C.UTF-8' AS datctype, NULL::VARCHAR AS daticulocale, NULL::VARCHAR[] AS datacl",
    "pg_roles": "SELECT 'mesh' AS rolname, false AS rolsuper, true AS rolinherit, "
    "false AS rolcreaterole, false AS rolcreatedb, false AS rolcanlogin, "
    "false AS rolreplication, -1 AS rolconnlimit, NULL::VARCHAR AS rolpassword, "
    "NULL::TIMESTAMPTZ AS rolvaliduntil, false AS rolbypassrls, NULL::VARCHAR[] AS rolconfig, "
    "0::BIGINT AS oid",
}
_EMPTY = {
    "pg_collation": "oid BIGINT, collname VARCHAR, collnamespace BIGINT, collowner BIGINT, "
    "collprovider VARCHAR, collisdeterministic BOOLEAN, collencoding INTEGER, "
    "collcollate VARCHAR, collctype VARCHAR",
    "pg_inherits": "inhrelid BIGINT, inhparent BIGINT, inhseqno INTEGER, inhdetachpending BOOLEAN",
    "pg_trigger": "oid BIGINT, tgrelid BIGINT, tgparentid BIGINT, tgname VARCHAR, "
    "tgfoid BIGINT, tgtype SMALLINT, tgenabled VARCHAR, tgisinternal BOOLEAN, "
    "tgconstrrelid BIGINT, tgconstrindid BIGINT, tgconstraint BIGINT, tgdeferrable BOOLEAN, "
    "tginitdeferred BOOLEAN, tgnargs SMALLINT, tgattr SMALLINT[], tgargs BLOB, "
    "tgqual VARCHAR, tgoldtable VARCHAR, tgnewtable VARCHAR",
    "pg_policy": "oid BIGINT, polname VARCHAR, polrelid BIGINT, polcmd VARCHAR, "
    "polpermissive BOOLEAN, polroles BIGINT[], polqual VARCHAR, polwithcheck VARCHAR",
    "pg_statistic_ext": "oid BIGINT, stxrelid BIGINT, stxname VARCHAR, stxnamespace BIGINT, "
    "stxowner BIGINT, stxstattarget INTEGER, stxkeys SMALLINT[], stxkind VARCHAR[], "
    "stxexprs VARCHAR",
    "pg_publication": "oid BIGINT, pubname VARCHAR, pubowner BIGINT, puballtables BOOLEAN, "
    "pubinsert BOOLEAN, pubupdate BOOLEAN, pubdelete BOOLEAN, pubtruncate BOOLEAN, "
    "pubviaroot BOOLEAN",
    "pg_publication_rel": "oid BIGINT, prpubid BIGINT, prrelid BIGINT, prqual VARCHAR, "
    "prattrs SMALLINT[]",
    "pg_publication_namespace": "oid BIGINT, pnpubid BIGINT, pnnspid BIGINT",
    "pg_partitioned_table": "partrelid BIGINT, partstrat VARCHAR, partnatts SMALLINT, "
    "partdefid BIGINT, partattrs SMALLINT[], partclass BIGINT[], partcollation BIGINT[], "
    "partexprs VARCHAR",
}


def _shadow_macros() -> list[str]:
    """The ``mesh_<relation>()`` table macros of :data:`dialect.SHADOWED_RELATIONS` (pg_type's
    is :func:`_pg_type_macro`), and the functions they and PostgreSQL's tools call."""
    bodies = dict(_SHADOWS, pg_type=None)
    for name, columns in _EMPTY.items():
        typed = ", ".join(
            f"NULL::{kind} AS {column}"
            for column, kind in (c.strip().split(" ", 1) for c in columns.split(","))
        )
        bodies[name] = f"SELECT {typed} WHERE false"
    formatted = ", ".join(f"({oid}, '{name}')" for oid, name in _FORMATTED.items())
    macros = [
        f"CREATE MACRO mesh_type_oid(t) AS {_TYPE_OID}",
        "CREATE MACRO format_type(type_oid, typemod) AS CASE "
        "WHEN type_oid = 1700 AND typemod >= 4 THEN "
        "'numeric(' || ((typemod - 4) >> 16) || ',' || ((typemod - 4) & 65535) || ')' "
        f"ELSE coalesce((SELECT f.name FROM (VALUES {formatted}) f(oid, name) "
        "WHERE f.oid = type_oid), mesh_regtype(type_oid)) END",
    ]
    for name in sorted(SHADOWED_RELATIONS - {"pg_type"}):
        macros.append(f"CREATE MACRO mesh_{name}() AS TABLE {bodies[name]}")
    return macros


def _pg_type_macro() -> str:
    rows = []
    for oid, name, length, category, array, receive in _TYPES:
        send = receive.replace("recv", "send")
        rows.append(f"({oid}, '{name}', 11, {length}, 'b', '{category}', ',', 0, 0, {array}, "
                    f"'{receive}', '{send}', 0, 0)")  # fmt: skip
        rows.append(f"({array}, '_{name}', 11, -1, 'b', 'A', ',', 0, {oid}, 0, 'array_recv', "
                    f"'array_send', 0, 0)")  # fmt: skip
    columns = ("oid, typname, typnamespace, typlen, typtype, typcategory, typdelim, typrelid, "
               "typelem, typarray, typreceive, typsend, typbasetype, typcollation")  # fmt: skip
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
            for macro in (_pg_type_macro(), *_MACROS, *_shadow_macros()):
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
