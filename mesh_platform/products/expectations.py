"""Run a descriptor's Great Expectations suite on staged rows, without leaking values.

The expectations SQL states exactly run in DuckDB, in one scan of the staged files
(:mod:`mesh_platform.products.expectations_sql`); Great Expectations runs the others, and is
imported only then. Great Expectations runs on its pandas path: its SQL path on DuckDB is
broken as shipped (every expectation errors; regex is unsupported for the dialect). Only the
columns the suite reads are loaded from the staged Parquet files.

Results are reduced to counts before they leave this module: GE's own results can carry the
failing values (``partial_unexpected_list``, ``observed_value``), which for a personal-data column
would put the data itself into the Dagster event log. Observed values are kept only for columns
that are not classified as personal data; exception messages are replaced by their type.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.expectations_sql import evaluate, sql_expectations
from mesh_platform.products.outcomes import CheckOutcome

if TYPE_CHECKING:
    import pyarrow as pa

_COUNT_KEYS = ("element_count", "unexpected_count", "unexpected_percent", "missing_count")
# Expectations whose observed_value is an aggregate (a count, a mean) rather than a data value.
_AGGREGATE_OBSERVED = frozenset(
    {
        "expect_table_row_count_to_be_between",
        "expect_column_proportion_of_unique_values_to_be_between",
    }
)
_INDEX = "mesh_index"
_TABLE_COLUMNS = frozenset({"expect_table_columns_to_match_set"})


def quiet_gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # heavy: Great Expectations (5-9 s), only for products with expectations
    import great_expectations as gx

    for name in ("great_expectations", "great_expectations.core"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # GE fingerprints every in-memory DataFrame under 1 GB (an md5 of pandas' row hashes) just
    # to label the batch; the staged snapshot is already identified by its Iceberg snapshot id.
    # Measured on 6M rows x 3 columns: 1.0 s -> 0.25 s per suite.
    # heavy: Great Expectations (5-9 s), only for products with expectations
    from great_expectations.execution_engine import (
        pandas_execution_engine,
    )

    pandas_execution_engine.HASH_THRESHOLD = 0
    return gx


def _safe_result(descriptor: ProductDescriptor, kind: str, column: str | None, result: Any) -> dict:
    raw = dict(getattr(result, "result", None) or {})
    safe = {k: raw[k] for k in _COUNT_KEYS if k in raw}
    observed = raw.get("observed_value")
    is_pii = column is not None and column in descriptor.pii_columns
    if observed is not None and (kind in _AGGREGATE_OBSERVED or not is_pii):
        plain = isinstance(observed, (int, float, str))
        safe["observed_value"] = observed if plain else str(observed)
    if isinstance(safe.get("observed_value"), float):
        safe["observed_value"] = round(safe["observed_value"], 6)
    for key in ("observed_value",):
        value = safe.get(key)
        if hasattr(value, "item"):  # numpy scalar
            safe[key] = value.item()
    return safe


def _decimals_as_float(data: pa.Table) -> pa.Table:
    """Decimal columns become float64 for the pandas path: as Python Decimal objects (pandas'
    object dtype) every expectation runs row by row in Python, ~20x slower (measured: 3.8 s vs
    0.2 s on 600k rows). Bounds in expectations are floats anyway."""
    import pyarrow as pa  # heavy: pyarrow (~0.3 s), kept off the import path of light commands

    for i, f in enumerate(data.schema):
        if pa.types.is_decimal(f.type):
            data = data.set_column(i, f.name, data.column(i).cast(pa.float64()))
    return data


def _gx_results(
    descriptor: ProductDescriptor,
    load: Callable[[Iterable[str] | None], pa.Table],
    indices: list[int],
) -> tuple[int, dict[int, dict[str, Any]]]:
    """Great Expectations on the expectations at ``indices``: (rows, index -> result)."""
    expectations = [descriptor.body.sla.expectations[i] for i in indices]
    needs_all = any(e.type in _TABLE_COLUMNS for e in expectations)
    columns = sorted({c for e in expectations for c in e.columns})
    if not needs_all and not columns:  # table-level only: one column gives the row count
        columns = [descriptor.columns[0].name] if descriptor.columns else []
    data = load(None if needs_all or not columns else columns)
    frame = _decimals_as_float(data).to_pandas()

    gx = quiet_gx()
    # heavy: Great Expectations (5-9 s), only for products with expectations
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    context = gx.get_context(mode="ephemeral")
    with _no_progress_bars(context):
        batch = (
            context.data_sources.add_pandas("mesh")
            .add_dataframe_asset(str(descriptor.address))
            .add_batch_definition_whole_dataframe("staged")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        suite = gx.ExpectationSuite(
            name=str(descriptor.address),
            expectations=[
                ExpectationConfiguration(
                    type=e.type, kwargs=e.kwargs, meta={_INDEX: i}
                ).to_domain_obj()
                for i, e in zip(indices, expectations, strict=True)
            ],
        )
        validation = batch.validate(
            suite, result_format={"result_format": "BASIC", "partial_unexpected_count": 0}
        )
    results: dict[int, dict[str, Any]] = {}
    # GE groups results by column, not in suite order: match each by the index in its meta.
    for result in validation.results:
        i = result.expectation_config.meta[_INDEX]
        expectation = descriptor.body.sla.expectations[i]
        entry: dict[str, Any] = {"success": bool(result.success)}
        info = result.exception_info or {}
        if info.get("raised_exception"):
            message = str(info.get("exception_message") or "")
            entry["error"] = message.split(":")[0][:80] or "raised an exception"
        entry.update(_safe_result(descriptor, expectation.type, expectation.column, result))
        results[i] = entry
    return len(frame), results


def run_suite(
    descriptor: ProductDescriptor,
    load: Callable[[Iterable[str] | None], pa.Table],
    sql: tuple[Any, str, Mapping[str, str]] | None = None,
) -> CheckOutcome:
    """Validate the staged rows (``load(columns)`` returns them as Arrow) against the suite.

    ``sql``: a DuckDB connection, the staged files as a relation and their columns' types:
    the expectations SQL states exactly are evaluated there in one scan
    (:mod:`mesh_platform.products.expectations_sql`), Great Expectations runs the others only
    (and all of them if that query fails)."""
    expectations = descriptor.body.sla.expectations
    by_index: dict[int, dict[str, Any]] = {}
    rows = 0
    if sql is not None and (stated := sql_expectations(expectations, sql[2])):
        try:
            rows, by_index = evaluate(sql[0], sql[1], expectations, stated)
        except Exception:  # Great Expectations then evaluates every expectation
            by_index = {}
    if rest := [i for i in range(len(expectations)) if i not in by_index]:
        rows, found = _gx_results(descriptor, load, rest)
        by_index.update(found)

    results: dict[str, Any] = {}
    failed: list[str] = []
    labels = [e.label() for e in expectations]
    for i in range(len(expectations)):
        label = labels[i] if labels.count(labels[i]) == 1 else f"{labels[i]}#{i + 1}"
        entry = by_index[i]
        results[label] = entry
        if not entry["success"]:
            count = entry.get("unexpected_count")
            failed.append(label + (f" ({count} row(s) unexpected)" if count else ""))
    metadata: dict[str, Any] = {
        "rows_checked": rows,
        "results": results,
        "engine": "duckdb" if not rest else "great_expectations" if len(rest) == len(
            expectations) else "duckdb+great_expectations",
    }  # fmt: skip
    if failed:
        fix = (
            "correct the data (its source or the model), or the expectation in sla.expectations "
            f"of {descriptor.source_file} if it is the one that is wrong; then build again"
        )
        return CheckOutcome(False, f"failed: {', '.join(failed)}", metadata, fix=fix)
    return CheckOutcome(True, f"{len(expectations)} expectation(s) passed", metadata)


class _no_progress_bars:
    def __init__(self, context: Any) -> None:
        self.context = context

    def __enter__(self) -> None:
        try:
            # heavy: Great Expectations (5-9 s), only for products with expectations
            from great_expectations.data_context.types.base import (
                ProgressBarsConfig,
            )

            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        except Exception:  # pragma: no cover - older layouts; bars only cost log noise
            pass

    def __exit__(self, *exc: object) -> None:
        return None
