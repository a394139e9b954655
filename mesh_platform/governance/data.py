"""Data policies, run inside the publication gate on exactly the staged rows.

- ``pii_detection``: every string column NOT classified as personal data is scanned for emails,
  phone numbers, credit card numbers (Luhn-checked), IBANs (mod-97-checked), national ids (US
  SSN form) and IP addresses. A hit blocks publication, naming the column and the kind and the
  number of rows, never a value.
- ``pii_masking_verified``: every personal-data column is masked as its rule says (a hash looks
  like a hash, a redaction is redacted...), and none of its values still looks like the
  personal data it was.

Masking (:func:`masked_relation`, rules in :mod:`mesh_platform.access.masking`) happens on
publication, before staging: the audit branch holds no clear personal data, except columns the
descriptor masks at read (``masking_at: read``), which the read paths mask per reader. Scans
run in DuckDB over the staged Parquet files; candidate values for the checksum recognisers are
validated in memory and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from mesh_platform.access.masking import mask_expression, masked_shape
from mesh_platform.addressing import quote_ident, quote_literal
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.gate import CheckOutcome, GateCheck, GateContext, register_gate_check

# kind -> DuckDB (RE2) pattern of a candidate
RECOGNISERS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "phone": r"(\+\d{1,3}[-. ]?)?\(?\d{3}\)?[-. ]\d{3}[-. ]\d{4}",
    "credit_card": r"\b\d{4}[- ]?\d{4}[- ]?\d{4}[- ]?\d{1,7}\b",
    "iban": r"\b[A-Z]{2}\d{2}( ?[A-Z0-9]){11,30}\b",  # compact or printed in groups
    "national_id": r"\b\d{3}-\d{2}-\d{4}\b",
    "ip_address": r"\b((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)\b",
}
_CANDIDATES = 200  # values checked in memory per column for checksum recognisers


def luhn_valid(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    s = re.sub(r"\s", "", text).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", s):
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


_VALIDATORS = {"credit_card": luhn_valid, "iban": iban_valid}


def masked_relation(
    conn: Any, descriptor: ProductDescriptor, relation: str, salt: str | None
) -> str:
    """A view of ``relation`` with every column masked on publication masked; ``relation`` if
    none is. Columns masked at read (``masking_at: read``) are stored in clear."""
    masked = [c for c in descriptor.columns if c.masked_on_publication]
    if not masked:
        return relation
    schema, table = relation.split(".")
    replaces = [
        mask_expression(c.masking, quote_ident(c.name), salt, what=f"product {descriptor.address}")
        + f" AS {quote_ident(c.name)}"
        for c in masked
    ]
    view = f"mesh_publish.{descriptor.address.table}"
    conn.execute("CREATE SCHEMA IF NOT EXISTS mesh_publish")
    conn.execute(
        f"CREATE OR REPLACE VIEW mesh_publish.{quote_ident(descriptor.address.table)} AS "
        f"SELECT * REPLACE ({', '.join(replaces)}) "
        f"FROM {quote_ident(schema)}.{quote_ident(table)}"
    )
    return view


def _staged_view(ctx: GateContext) -> tuple[Any, str]:
    from mesh_platform.duckdb_ext import connect
    from mesh_platform.storage.warehouse import configure_duckdb

    conn = connect()
    configure_duckdb(conn, ctx.table.io.properties)  # s3:// warehouse: httpfs
    files = ", ".join(quote_literal(f) for f in ctx.stage.data_files)
    return conn, f"read_parquet([{files}])" if files else "(SELECT NULL AS _ WHERE false)"


def _string_columns(ctx: GateContext, names: Iterable[str]) -> list[str]:
    schema = {f.name: str(f.field_type) for f in ctx.table.schema().fields}
    return [n for n in names if schema.get(n) == "string"]


class PiiDetection(GateCheck):
    name = "pii_detection"
    description = (
        "No personal data (email, phone, card, IBAN, national id, IP address) in columns that "
        "are not classified as personal."
    )

    def evaluate(self, ctx: GateContext) -> CheckOutcome:
        columns = _string_columns(ctx, [c.name for c in ctx.descriptor.columns if not c.pii_kind])
        if not columns or not ctx.stage.data_files:
            return CheckOutcome(True, "no unclassified string column to scan", {"columns": 0})
        conn, source = _staged_view(ctx)
        hits: dict[str, dict[str, int]] = {}
        try:
            for column in columns:
                # Each distinct value is matched once (most columns repeat values: a status,
                # a code), weighted by its row count.
                values = (
                    f"(SELECT {quote_ident(column)} AS v, count(*) AS n FROM {source} "
                    f"WHERE {quote_ident(column)} IS NOT NULL GROUP BY 1)"
                )
                counts = ", ".join(
                    f"coalesce(sum(n) FILTER (WHERE regexp_matches(v, {quote_literal(p)})), 0)"
                    for p in RECOGNISERS.values()
                )
                row = conn.execute(f"SELECT {counts} FROM {values}").fetchone()
                for kind, count in zip(RECOGNISERS, row, strict=True):
                    if count and kind in _VALIDATORS:  # confirm by checksum, in memory only
                        pattern = quote_literal(RECOGNISERS[kind])
                        candidates = conn.execute(
                            f"SELECT regexp_extract(v, {pattern}), n FROM {values} "
                            f"WHERE regexp_matches(v, {pattern}) LIMIT {_CANDIDATES}"
                        ).fetchall()
                        count = sum(n for v, n in candidates if _VALIDATORS[kind](v))
                        del candidates
                    if count:
                        hits.setdefault(column, {})[kind] = int(count)
        finally:
            conn.close()
        metadata: dict[str, Any] = {"columns_scanned": columns, "hits": hits}
        if hits:
            found = "; ".join(
                f"column {c}: {', '.join(f'{k} in {n} row(s)' for k, n in kinds_.items())}"
                for c, kinds_ in sorted(hits.items())
            )
            return CheckOutcome(
                False,
                f"personal data in unclassified column(s): {found}. Classify the column "
                "(pii:<kind>) with a masking rule, or remove the data",
                metadata,
            )
        return CheckOutcome(True, f"{len(columns)} column(s) scanned, no personal data", metadata)


class PiiMaskingVerified(GateCheck):
    name = "pii_masking_verified"
    description = (
        "Personal-data columns are published masked as their rule says (or, masked at read, "
        "are served masked by it)."
    )

    def applies(self, descriptor: ProductDescriptor) -> bool:
        return any(c.pii_kind for c in descriptor.columns)

    def evaluate(self, ctx: GateContext) -> CheckOutcome:
        pii = [c for c in ctx.descriptor.columns if c.pii_kind]
        if not ctx.stage.data_files:
            return CheckOutcome(True, "no rows staged", {})
        conn, source = _staged_view(ctx)
        problems: dict[str, str] = {}
        try:
            for column in pii:
                if column.masking is None:
                    problems[column.name] = "no masking rule: published in clear"
                    continue
                ident = quote_ident(column.name)
                value = f"CAST({ident} AS VARCHAR)"
                if column.masked_on_read:  # stored in clear: verify what readers are served
                    value = mask_expression(column.masking, ident, "salt", what=column.name)
                shape = masked_shape(column.masking)
                clear = RECOGNISERS.get(column.pii_kind or "")
                condition = f"NOT regexp_matches({value}, {quote_literal(shape)})"
                if clear:
                    condition += f" OR regexp_matches({value}, {quote_literal(clear)})"
                bad = conn.execute(
                    f"SELECT count(*) FROM {source} WHERE {ident} IS NOT NULL AND ({condition})"
                ).fetchone()[0]
                if bad:
                    problems[column.name] = f"{bad} row(s) not masked by rule {column.masking!r}"
        finally:
            conn.close()
        metadata = {"columns": [c.name for c in pii], "problems": problems}
        if problems:
            listing = "; ".join(f"{c}: {why}" for c, why in sorted(problems.items()))
            return CheckOutcome(False, f"personal data not masked: {listing}", metadata)
        return CheckOutcome(True, f"{len(pii)} personal-data column(s) masked", metadata)


register_gate_check(PiiDetection())
register_gate_check(PiiMaskingVerified())
