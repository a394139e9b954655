"""The descriptor's expectations that SQL states exactly, evaluated by DuckDB on the staged files.

Great Expectations' pandas path loads the columns into pandas (decimals cast to floats) and
walks them expectation by expectation; importing it costs 5-9 s. The expectations products
declare most (not null, between, in set, unique, row count) are one aggregate each: they are
computed here in one scan of the staged files (a ``unique`` adds one grouped scan of its
column), with the figures Great Expectations reports for them (``element_count``,
``missing_count``, ``unexpected_count``, ``unexpected_percent``; ``observed_value`` for the row
count) and its verdict, ``mostly`` included. Every other expectation, or one whose arguments
this module does not state exactly (a ``row_condition``, a date bound, a set mixing types),
is left to Great Expectations (:mod:`mesh_platform.products.expectations`), which the gate then
runs for those only. tests/test_expectations_sql.py checks each form against Great
Expectations on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mesh_platform.addressing import quote_ident, quote_literal
from mesh_platform.products.descriptor_sla import Expectation

_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL")  # fmt: skip
_MAP_KWARGS = {
    "expect_column_values_to_not_be_null": {"column", "mostly"},
    "expect_column_values_to_be_null": {"column", "mostly"},
    "expect_column_values_to_be_between": {
        "column", "min_value", "max_value", "strict_min", "strict_max", "mostly"
    },
    "expect_column_values_to_be_in_set": {"column", "value_set", "mostly"},
    "expect_column_values_to_not_be_in_set": {"column", "value_set", "mostly"},
    "expect_column_values_to_be_unique": {"column", "mostly"},
    "expect_table_row_count_to_be_between": {"min_value", "max_value"},
}  # fmt: skip


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric(kind: str) -> bool:
    return kind.upper().startswith(_NUMERIC)


def _literals(values: Any, kind: str) -> str | None:
    """The value set as SQL literals of the column's kind (None: not stated exactly: pandas'
    isin matches by type, DuckDB would cast)."""
    if not isinstance(values, list) or not values:
        return None
    if _numeric(kind) and all(_number(v) for v in values):
        return ", ".join(repr(float(v)) if isinstance(v, float) else str(v) for v in values)
    if kind.upper() == "VARCHAR" and all(isinstance(v, str) for v in values):
        return ", ".join(quote_literal(v) for v in values)
    return None


def outside_bounds(column: str, kwargs: Mapping[str, Any], literal: Callable[[Any], str]) -> str:
    """The SQL predicate true for a value expect_column_values_to_be_between rejects (``kwargs``
    holds at least one bound; ``literal`` writes a bound). The gate and the ODCS export both
    use it, so the rule other tools run is the gate's own."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    parts = []
    if low is not None:
        parts.append(f"{column} {'<=' if kwargs.get('strict_min') else '<'} {literal(low)}")
    if high is not None:
        parts.append(f"{column} {'>=' if kwargs.get('strict_max') else '>'} {literal(high)}")
    return " OR ".join(parts)


def _unexpected(e: Expectation, col: str, kind: str) -> str | None:
    """A predicate true for a non-null value the expectation rejects (None: not stated)."""
    kw = e.kwargs
    if e.type == "expect_column_values_to_be_between":
        low, high = kw.get("min_value"), kw.get("max_value")
        if not _numeric(kind) or not all(v is None or _number(v) for v in (low, high)):
            return None
        if low is None and high is None:
            return None
        return outside_bounds(col, kw, lambda v: repr(float(v)))
    if e.type in ("expect_column_values_to_be_in_set", "expect_column_values_to_not_be_in_set"):
        listing = _literals(kw.get("value_set"), kind)
        if listing is None:
            return None
        negate = "NOT " if e.type == "expect_column_values_to_be_in_set" else ""
        return f"{col} {negate}IN ({listing})"
    return None


def sql_expectations(
    expectations: Sequence[Expectation], types: Mapping[str, str]
) -> dict[int, str]:
    """index -> the SQL aggregate(s) of each expectation stated exactly here, given the staged
    columns' DuckDB types; the others are Great Expectations'."""
    stated: dict[int, str] = {}
    for i, e in enumerate(expectations):
        allowed = _MAP_KWARGS.get(e.type)
        if allowed is None or set(e.kwargs) - allowed:
            continue
        mostly = e.kwargs.get("mostly")
        if mostly is not None and not (_number(mostly) and 0 <= mostly <= 1):
            continue
        if e.type == "expect_table_row_count_to_be_between":
            if all(v is None or (_number(v) and float(v).is_integer()) for v in
                   (e.kwargs.get("min_value"), e.kwargs.get("max_value"))):  # fmt: skip
                stated[i] = "count(*)"
            continue
        if e.column not in types:
            continue
        col = quote_ident(e.column)
        if e.type in ("expect_column_values_to_not_be_null", "expect_column_values_to_be_null"):
            stated[i] = f"count({col})"
        elif e.type == "expect_column_values_to_be_unique":
            stated[i] = (
                f"(SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {{source}} WHERE {col} IS NOT NULL GROUP BY {col} HAVING count(*) > 1))"  # noqa: E501
            )
        elif (predicate := _unexpected(e, col, types[e.column])) is not None:
            stated[i] = f"count(*) FILTER (WHERE {predicate})"
    return stated


def _verdict(e: Expectation, rows: int, value: int, nonnull: int | None) -> dict[str, Any]:
    """Great Expectations' result (the figures the gate keeps) from the counts."""
    kw = e.kwargs
    if e.type == "expect_table_row_count_to_be_between":
        low, high = kw.get("min_value"), kw.get("max_value")
        ok = (low is None or rows >= low) and (high is None or rows <= high)
        return {"success": ok, "observed_value": rows}
    if e.type == "expect_column_values_to_not_be_null":
        unexpected, base = rows - value, rows
        result: dict[str, Any] = {"element_count": rows}
    elif e.type == "expect_column_values_to_be_null":
        unexpected, base = value, rows
        result = {"element_count": rows}
    else:
        assert nonnull is not None
        unexpected, base = value, nonnull
        result = {"element_count": rows}
    percent = unexpected / base * 100 if base else None  # as Great Expectations reports it
    mostly = kw.get("mostly", 1)
    success = base == 0 or (base - unexpected) / base >= mostly
    result.update(unexpected_count=unexpected, unexpected_percent=percent)
    if e.type not in ("expect_column_values_to_not_be_null", "expect_column_values_to_be_null"):
        result["missing_count"] = rows - (nonnull or 0)
    return {"success": bool(success), **result}


def evaluate(
    conn: Any, source: str, expectations: Sequence[Expectation], stated: Mapping[int, str]
) -> tuple[int, dict[int, dict[str, Any]]]:
    """Run the ``stated`` expectations on ``source`` in one query: (rows, index -> result)."""
    columns = sorted({e.column for i, e in enumerate(expectations) if i in stated and e.column})
    selects = ["count(*)"] + [f"count({quote_ident(c)})" for c in columns]
    selects += [stated[i].replace("{source}", source) for i in sorted(stated)]
    row = conn.execute(f"SELECT {', '.join(selects)} FROM {source}").fetchone()
    rows = int(row[0])
    nonnull = {c: int(v) for c, v in zip(columns, row[1 : 1 + len(columns)], strict=True)}
    values = dict(zip(sorted(stated), row[1 + len(columns) :], strict=True))
    return rows, {
        i: _verdict(expectations[i], rows, int(values[i] or 0), nonnull.get(expectations[i].column))
        for i in stated
    }
