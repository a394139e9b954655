"""Who read which columns of which products, from the query audit log.

The audit log (:mod:`mesh_platform.query.audit`) records, per query, the principal, the products
read and the SQL with every literal replaced by ``?``: names, keywords and operators are kept,
so the columns are still there. Each query that ran (status ``ok``) is parsed again with sqlglot
and qualified against the products' columns; a column counts as read wherever the query names it
(select list, join, filter, grouping) and a star counts as every column.

Limits, by construction of the log: a quoted name that is not a plain identifier was logged as
``"?"`` and is lost; a query that no longer parses, or a column sqlglot cannot attribute to one
product (an unqualified name over several products whose columns are unknown), counts as reading
*every* column of the products it read (``exact`` is false), never as reading none; the columns
are resolved against the columns given (e.g. the base revision's and the current ones), not the
columns the product had when the query ran. A consumer domain's staging of its inputs
(``dbt run: stage consumed products``) is not SQL: its column use comes from lineage instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope

from mesh_platform.query.audit import AuditLog
from mesh_platform.query.sql import DIALECT

STAGING_PREFIX = "dbt run:"


@dataclass(frozen=True)
class ColumnRead:
    """One query of one principal: the columns it read of each product."""

    at: dt.datetime
    principal: str
    query_id: str
    columns: dict[str, frozenset[str]]  # address -> columns read
    exact: bool  # False: some product's columns unknown, counted as all of them


def _schema(columns: Mapping[str, Sequence[str]]) -> dict[str, dict[str, dict[str, str]]]:
    schema: dict[str, dict[str, dict[str, str]]] = {}
    for address, names in columns.items():
        domain, _, table = address.partition(".")
        schema.setdefault(domain, {})[table] = {n: "unknown" for n in names}
    return schema


def query_columns(
    sql: str, addresses: Sequence[str], columns: Mapping[str, Sequence[str]]
) -> tuple[dict[str, frozenset[str]], bool]:
    """(address -> columns a logged query read, exact?) for the products it read."""
    every = {a: frozenset(columns.get(a, ())) for a in addresses}
    try:
        tree = qualify(
            sqlglot.parse_one(sql, dialect=DIALECT), schema=_schema(columns), dialect=DIALECT,
            validate_qualify_columns=False, identify=False,
        )  # fmt: skip
    except (SqlglotError, RecursionError, ValueError):
        return every, False
    found: dict[str, set[str]] = {a: set() for a in addresses}
    exact = True
    for scope in traverse_scope(tree):
        for column in scope.columns:
            source = scope.sources.get(column.table)
            if isinstance(source, exp.Table):
                address = f"{source.db}.{source.name}".lower()
                if address in found:
                    found[address].add(column.name)
            elif not column.table:  # not attributed to a product: count it for all of them
                exact = False
                for a in found:
                    found[a] |= every[a]
    return {a: frozenset(c) for a, c in found.items()}, exact


def column_reads(
    log: AuditLog,
    columns: Mapping[str, Sequence[str]],
    *,
    since: dt.datetime,
    addresses: Iterable[str] | None = None,
) -> list[ColumnRead]:
    """Queries that ran since ``since`` (reading any of ``addresses``, default all) and the
    columns each read; ``columns``: each product's columns to resolve the SQL against."""
    wanted = set(addresses) if addresses is not None else None
    reads = []
    for entry in log.entries():
        if entry.get("status") != "ok" or not entry.get("query"):
            continue
        if str(entry["query"]).startswith(STAGING_PREFIX):
            continue
        try:
            at = dt.datetime.fromisoformat(entry["at"])
        except (KeyError, ValueError):
            continue
        if at < since:
            continue
        read = [str(p.get("address")) for p in entry.get("products") or []]
        if not read or (wanted is not None and not wanted & set(read)):
            continue
        used, exact = query_columns(str(entry["query"]), read, columns)
        reads.append(ColumnRead(at, str(entry.get("principal")), str(entry.get("id")), used, exact))
    return reads
