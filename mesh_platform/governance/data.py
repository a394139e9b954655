"""Data policies, run inside the publication gate on exactly the staged rows.

- ``pii_detection``: every value of every column NOT classified as personal data is scanned,
  at any depth: the Iceberg schema is walked down to its leaves (struct fields, list elements,
  map keys and values, in any combination), and each leaf is scanned by its type:

  - text (string, JSON stored as text, binary, and any type not listed below, cast to text):
    emails, phone numbers, credit card numbers (Luhn-checked), IBANs (mod-97-checked), national
    ids (US SSN form) and IP addresses; a value of digits alone is also read as a number;
  - numbers (int, long, decimal, float, double): whole values shaped like a phone, a card or
    (where a name on the field's path says so) a national id, by the column-level rules of
    :func:`number_hits`;
  - boolean, date, time, timestamp, uuid, geometry: no recogniser applies (a date of birth is
    recognised by its name, in the static ``pii_column_names`` policy).

  A hit blocks publication, naming the column (with the path of a nested field,
  ``contacts[].email``), the kind and the number of rows (for a field under a list or a map:
  of values), never a value.
- ``pii_masking_verified``: every personal-data column is masked as its rule says (a hash looks
  like a hash, a redaction is redacted...), and none of its values still looks like the
  personal data it was.

Masking (:func:`mesh_platform.access.masking.masked_relation`) happens on
publication, before staging: the audit branch holds no clear personal data, except columns the
descriptor masks at read (``masking_at: read``), which the read paths mask per reader. Scans
run in DuckDB over the staged Parquet files; text candidates for the checksum recognisers are
validated in memory and dropped, numbers are validated in SQL.

Longer than 450 lines because the two data policies share one walk of the schema and one scan
of the staged rows; what a value may hide is decided in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from mesh_platform.access.masking import (
    mask_expression,
    masked_shape,
)
from mesh_platform.addressing import quote_ident, quote_literal
from mesh_platform.duckdb_ext import connect
from mesh_platform.governance.builtin import pii_name_kind
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.gate import GateCheck, GateContext, register_gate_check
from mesh_platform.products.outcomes import CheckOutcome
from mesh_platform.storage.warehouse import configure_duckdb

if TYPE_CHECKING:
    from pyiceberg.types import IcebergType

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


def _staged_view(ctx: GateContext) -> tuple[Any, str]:

    conn = connect()
    configure_duckdb(conn, ctx.table.io.properties)  # s3:// warehouse: httpfs
    files = ", ".join(quote_literal(f) for f in ctx.stage.data_files)
    return conn, f"read_parquet([{files}])" if files else "(SELECT NULL AS _ WHERE false)"


# --- where a value can sit: every leaf of the Iceberg schema ----------------------------------

LeafKind = Literal["text", "number"]
_NUMBER_TYPES = frozenset({"IntegerType", "LongType", "DecimalType", "FloatType", "DoubleType"})
# Types whose values cannot spell any recognised kind. Every other primitive type (string,
# binary, fixed, and whatever Iceberg adds next) is cast to text and scanned: the class of
# unscanned types stays closed unless someone extends this list.
_UNSCANNED_TYPES = frozenset(
    {"BooleanType", "DateType", "TimeType", "TimestampType", "TimestamptzType",
     "TimestampNanoType", "TimestamptzNanoType", "UUIDType", "UnknownType", "GeometryType",
     "GeographyType"}
)  # fmt: skip


@dataclass(frozen=True)
class Leaf:
    """One place a value sits in a row: a top-level column, or a field nested in it.

    ``expr`` is a DuckDB expression over a row of the staged files: the value itself or, under
    a list or a map (``repeated``), the list of the row's values at that place.
    """

    column: str  # the top-level column
    path: str  # the column, or e.g. 'contacts[].email', 'attributes{key}', 'person.ssn'
    kind: LeafKind
    type_name: str  # the Iceberg type's class name: how a number is made integral
    expr: str
    repeated: bool = False

    def texts(self, source: str) -> str:
        """SELECT of (v VARCHAR, n): each distinct value that holds a digit or an '@' (every
        text recogniser needs one) and its number of rows (values, when repeated). Filtering
        rows before grouping lets DuckDB test a dictionary-encoded column once per entry and
        spares free text the grouping (SF 1 lineitem comments: 0.7 s instead of 1.6 s)."""
        maybe = quote_literal(_MAYBE)
        if self.repeated:
            return (
                f"SELECT v, count(*) AS n FROM (SELECT CAST(unnest({self.expr}) AS VARCHAR) AS v "
                f"FROM {source}) WHERE regexp_matches(v, {maybe}) GROUP BY 1"
            )
        text = f"CAST({self.expr} AS VARCHAR)"  # JSON, binary...: their text
        return (
            f"SELECT {text} AS v, count(*) AS n FROM {source} "
            f"WHERE regexp_matches({text}, {maybe}) GROUP BY 1"
        )

    def numbers(self, source: str) -> str:
        """SELECT of (d, n = 1) for each non-null value, ``d`` its whole number (else NULL)."""
        if self.repeated:
            return (
                f"SELECT {_integral(self.type_name, 'v')} AS d, 1 AS n FROM (SELECT "
                f"unnest({self.expr}) AS v FROM {source}) WHERE v IS NOT NULL"
            )
        return (
            f"SELECT {_integral(self.type_name, self.expr)} AS d, 1 AS n FROM {source} "
            f"WHERE {self.expr} IS NOT NULL"
        )

    @property
    def named_national_id(self) -> bool:
        """A name on the path says national id (``ssn``, ``person.national_id``): the one
        name the data check reads, because nine digits are an SSN or a key by name only."""
        return any(
            pii_name_kind(part) == "national_id" for part in re.split(r"[.\[\]{}]", self.path)
        )


def schema_leaves(schema: Any) -> list[Leaf]:
    """Every scanned leaf of a pyiceberg schema, struct fields, list elements and map keys and
    values included at any depth, in column order."""
    found = []
    for field in schema.fields:
        for path, leaf_type, expr, repeated in _walk(field.field_type, quote_ident(field.name),
                                                     field.name, 0):  # fmt: skip
            name = type(leaf_type).__name__
            if name not in _UNSCANNED_TYPES:
                kind: LeafKind = "number" if name in _NUMBER_TYPES else "text"
                found.append(Leaf(field.name, path, kind, name, expr, repeated))
    return found


def _walk(
    t: IcebergType, expr: str, path: str, depth: int
) -> Iterator[tuple[str, IcebergType, str, bool]]:
    """(path, type, expression, repeated) of each primitive under ``expr`` of type ``t``."""
    # heavy: pyiceberg (~2 s); the gate has it loaded when this runs
    from pyiceberg.types import (
        ListType,
        MapType,
        StructType,
    )

    if isinstance(t, StructType):
        for f in t.fields:
            inner = f"struct_extract({expr}, {quote_literal(f.name)})"
            yield from _walk(f.field_type, inner, f"{path}.{f.name}", depth)
    elif isinstance(t, ListType | MapType):
        parts = (
            [(t.element_type, expr, "[]")]
            if isinstance(t, ListType)
            else [(t.key_type, f"map_keys({expr})", "{key}"),
                  (t.value_type, f"map_values({expr})", "{value}")]
        )  # fmt: skip
        var = f"mesh_x{depth}"
        for element_type, items, mark in parts:
            for sub_path, leaf_type, sub, repeated in _walk(element_type, var, path + mark,
                                                            depth + 1):  # fmt: skip
                listed = items if sub == var else f"list_transform({items}, lambda {var}: {sub})"
                yield sub_path, leaf_type, f"flatten({listed})" if repeated else listed, True
    else:
        yield path, t, expr, False


# --- numbers: digits shaped like a phone, a card or a national id ----------------------------

# North American numbering plan: NXX-NXX-XXXX (area code and exchange start with 2-9), with or
# without the country code 1. Other countries' numbers are too varied to tell from a key.
_PHONE = (
    "(d BETWEEN 2000000000 AND 9999999999 OR d BETWEEN 12000000000 AND 19999999999) "
    "AND (d // 10000) % 1000 >= 200"
)
# Issuer prefixes and lengths of the major networks (ISO/IEC 7812, simplified): Visa 4 (13, 16,
# 19 digits), Mastercard 51-55 and 22-27 (16), Amex 34/37 (15), Diners 30/36/38/39 (14-19), JCB
# 35 (16-19), Discover/UnionPay/Maestro 6 (16-19). A card also passes the Luhn checksum.
_CARD_SHAPE = (
    r"4\d{12}(\d{3}){0,2}|5[1-5]\d{14}|2[2-7]\d{14}|3[47]\d{13}|3[0689]\d{12,17}|35\d{14,17}"
    r"|6\d{15,18}"
)
_CARD_SHAPED = (
    f"d >= 1000000000000 AND regexp_full_match(CAST(d AS VARCHAR), {quote_literal(_CARD_SHAPE)})"
)
# US SSN: area 001-899 but 666, group 01-99, serial 0001-9999 (leading zeros lost in a number).
_NATIONAL_ID = (
    "d BETWEEN 1010001 AND 899999999 AND d // 1000000 <> 666 AND (d // 10000) % 100 <> 0 "
    "AND d % 10000 <> 0"
)


def _luhn_sql() -> str:
    """Luhn's checksum of ``d`` (UBIGINT) in plain arithmetic, one term per digit."""
    terms = []
    for i in range(20):
        digit = f"(d // CAST({10**i} AS UBIGINT) % 10)"
        terms.append(digit if i % 2 == 0 else f"(2 * {digit} - 9 * ({digit} // 5))")
    return f"({' + '.join(terms)}) % 10 = 0"


SQL_MACROS = (f"CREATE OR REPLACE TEMP MACRO mesh_luhn(d) AS {_luhn_sql()}",)
_DIGITS = r"\+?\d{7,19}"  # a text value of digits alone is also read as a number
_MAYBE = "[0-9@]"  # every text recogniser needs a digit or an '@'
# Below these, an integral column can hold no phone (2e9) nor card (1e12): skipped on min/max.
_SMALLEST_PHONE, _SMALLEST_NATIONAL_ID = 2_000_000_000, 1_010_001

# Column-level rules. A column of phones or cards holds them in (nearly) every row, so a hit
# needs a majority: random 64-bit ids are card-shaped and Luhn-valid in under 3% of rows,
# 10-digit measures drift in and out of the phone band. Sequential keys are told apart by
# density: the phone-shaped values of a key column fill their range (TPC-H order keys: one in
# 4), real phone numbers are spread over 8 billion (a batch needs 80 million distinct phones to
# fill 1% of it). Nine digits are an SSN only where a name on the field's path says so:
# otherwise every key column between 1e6 and 9e8 would be one.
PHONE_SHARE = 0.5
CARD_SHARE = 0.5
NATIONAL_ID_SHARE = 0.5
SEQUENCE_DENSITY = 0.01


@dataclass(frozen=True)
class NumberStats:
    """What the rules see of one place's numbers (weighted by rows)."""

    values: int  # non-null values (numbers: whole or not; text: values of digits alone)
    phones: int = 0
    phone_distinct: int = 0
    phone_span: int = 0  # max - min + 1 of the phone-shaped values
    cards: int = 0  # card-shaped and Luhn-valid
    national_ids: int = 0  # SSN-shaped, counted only where a name says national id


def number_hits(stats: NumberStats) -> dict[str, int]:
    """kind -> values, by the column-level rules above."""
    hits: dict[str, int] = {}
    if not stats.values:
        return hits
    sequence = stats.phone_distinct >= 2 and (
        stats.phone_distinct >= SEQUENCE_DENSITY * stats.phone_span
    )
    if stats.phones and stats.phones >= PHONE_SHARE * stats.values and not sequence:
        hits["phone"] = stats.phones
    if stats.cards and stats.cards >= CARD_SHARE * stats.values:
        hits["credit_card"] = stats.cards
    if stats.national_ids and stats.national_ids >= NATIONAL_ID_SHARE * stats.values:
        hits["national_id"] = stats.national_ids
    return hits


def _number_aggregates(base: str, national_id: bool) -> str:
    """NumberStats' aggregates over (d UBIGINT, n, p: d is phone-shaped), card-shaped values
    counted in place of cards (see :func:`_number_stats`); ``base`` counts the values the
    shares are of."""
    ssn = f"sum(n) FILTER (WHERE {_NATIONAL_ID})" if national_id else "0"
    return (
        f"{base}, sum(n) FILTER (WHERE p), approx_count_distinct(d) FILTER (WHERE p), "
        "max(d) FILTER (WHERE p) - min(d) FILTER (WHERE p) + 1, "
        f"sum(n) FILTER (WHERE {_CARD_SHAPED}), {ssn}"
    )


def _number_stats(conn: Any, numbers: str, row: tuple[Any, ...]) -> NumberStats:
    """NumberStats from the aggregates' ``row``: the Luhn checksum runs (in SQL, on the rows of
    ``numbers``) only when card-shaped values are a majority, so a column of random 19-digit
    ids does not pay it (0.6 s per million values)."""
    stats = NumberStats(*(int(x or 0) for x in row))
    if stats.cards < CARD_SHARE * stats.values or not stats.cards:
        return replace(stats, cards=0)
    valid = conn.execute(
        f"SELECT sum(n) FROM ({numbers}) WHERE {_CARD_SHAPED} AND mesh_luhn(d)"
    ).fetchone()[0]
    return replace(stats, cards=int(valid or 0))


def _integral(type_name: str, x: str) -> str:
    """``x`` as a UBIGINT when it is a whole number from 0 to 2^64 - 1 (every phone and card
    number; negatives are neither), else NULL. HUGEINT arithmetic costs 50 times more."""
    if type_name in ("IntegerType", "LongType"):
        return f"TRY_CAST({x} AS UBIGINT)"
    if type_name == "DecimalType":
        return f"CASE WHEN {x} = trunc({x}) THEN TRY_CAST({x} AS UBIGINT) END"
    return f"CASE WHEN isfinite({x}) AND {x} = trunc({x}) THEN TRY_CAST({x} AS UBIGINT) END"


def _number_scan(conn: Any, leaves: list[Leaf], source: str) -> dict[str, dict[str, int]]:
    """Hits of the number leaves. Columns whose values are all too small to be a phone, card
    or national id (keys, prices, quantities) are ruled out on their min and max alone, one
    query for all of them."""
    scalar = [leaf for leaf in leaves if not leaf.repeated]
    bounds = (
        conn.execute(
            "SELECT " + ", ".join(f"min({x.expr}), max({x.expr})" for x in scalar)
            + f" FROM {source}"
        ).fetchone()
        if scalar
        else ()
    )  # fmt: skip
    hits: dict[str, dict[str, int]] = {}
    for leaf in leaves:
        if not leaf.repeated:
            i = 2 * scalar.index(leaf)
            low, high = bounds[i], bounds[i + 1]
            if low is None:
                continue  # no value at all
            floor = _SMALLEST_NATIONAL_ID if leaf.named_national_id else _SMALLEST_PHONE
            # each end on its own: a NaN sorts last and would hide the max from max()
            if all(abs(float(end)) < floor for end in (low, high)):
                continue
        numbers = leaf.numbers(source)
        row = conn.execute(
            f"SELECT {_number_aggregates('sum(n)', leaf.named_national_id)} FROM "
            f"(SELECT d, n, {_PHONE} AS p FROM ({numbers}))"
        ).fetchone()
        if found := number_hits(_number_stats(conn, numbers, row)):
            hits[leaf.path] = found
    return hits


# --- text: the recognisers, and digits alone -------------------------------------------------


def _text_scan(conn: Any, leaf: Leaf, source: str) -> dict[str, int]:
    """Hits of one text leaf: each distinct candidate value is matched once, weighted by its
    rows (most columns repeat values: a status, a code)."""
    values = f"({leaf.texts(source)})"
    digits = (  # a value of digits alone, as a number
        f"(SELECT v, n, CASE WHEN regexp_full_match(v, {quote_literal(_DIGITS)}) THEN "
        f"TRY_CAST(ltrim(v, '+') AS UBIGINT) END AS d FROM {values})"
    )
    counts = ", ".join(
        f"coalesce(sum(n) FILTER (WHERE regexp_matches(v, {quote_literal(p)})), 0)"
        for p in RECOGNISERS.values()
    )
    aggregates = _number_aggregates("sum(n) FILTER (WHERE d IS NOT NULL)", leaf.named_national_id)
    row = conn.execute(
        f"SELECT {counts}, {aggregates} FROM (SELECT v, n, d, {_PHONE} AS p FROM {digits})"
    ).fetchone()
    hits: dict[str, int] = {}
    for kind, count in zip(RECOGNISERS, row[: len(RECOGNISERS)], strict=True):
        if count and kind in _VALIDATORS:  # confirm by checksum, in memory only
            pattern = quote_literal(RECOGNISERS[kind])
            candidates = conn.execute(
                f"SELECT regexp_extract_all(v, {pattern}), n FROM {values} "
                f"WHERE regexp_matches(v, {pattern}) LIMIT {_CANDIDATES}"
            ).fetchall()
            count = sum(n for found, n in candidates if any(map(_VALIDATORS[kind], found)))
            del candidates
        if count:
            hits[kind] = int(count)
    numbers = f"SELECT d, n FROM {digits} WHERE d IS NOT NULL"
    stats = _number_stats(conn, numbers, row[len(RECOGNISERS) :])
    for kind, count in number_hits(stats).items():
        hits[kind] = max(hits.get(kind, 0), count)
    return hits


def personal_data_hits(conn: Any, source: str, leaves: list[Leaf]) -> dict[str, dict[str, int]]:
    """The personal data found in ``leaves`` of the relation ``source`` (a DuckDB relation or
    table function on ``conn``): path -> kind -> rows (values under a list or a map). Counts
    only, never a value. The gate scans staged files with it; `mesh adopt` scans a built
    relation to suggest classifications."""
    for macro in SQL_MACROS:
        conn.execute(macro)
    hits: dict[str, dict[str, int]] = {}
    for leaf in leaves:
        if leaf.kind == "text" and (found := _text_scan(conn, leaf, source)):
            hits[leaf.path] = found
    numbers = _number_scan(conn, [x for x in leaves if x.kind == "number"], source)
    for path, found in numbers.items():
        hits[path] = {**hits.get(path, {}), **found}
    return hits


class PiiDetection(GateCheck):
    name = "pii_detection"
    description = (
        "No personal data (email, phone, card, IBAN, national id, IP address) in columns that "
        "are not classified as personal, at any depth (struct, list, map) and in numbers."
    )
    personal_data = True  # a blocked batch holds personal data: quarantined (products/gate.py)

    def evaluate(self, ctx: GateContext) -> CheckOutcome:
        personal = {c.name for c in ctx.descriptor.columns if c.pii_kind}
        leaves = [x for x in schema_leaves(ctx.table.schema()) if x.column not in personal]
        columns = sorted({x.column for x in leaves})
        if not leaves or not ctx.stage.data_files:
            return CheckOutcome(True, "no unclassified column to scan", {"columns": 0})
        conn, source = _staged_view(ctx)
        try:
            hits = personal_data_hits(conn, source, leaves)
        finally:
            conn.close()
        metadata: dict[str, Any] = {
            "columns_scanned": columns,
            "fields_scanned": len(leaves),
            "hits": hits,
        }
        if hits:
            repeated = {x.path for x in leaves if x.repeated}
            found = "; ".join(
                f"column {path}: "
                + ", ".join(
                    f"{kind} in {n} {'value' if path in repeated else 'row'}(s)"
                    for kind, n in kinds_.items()
                )
                for path, kinds_ in sorted(hits.items())
            )
            return CheckOutcome(
                False,
                f"personal data in unclassified column(s): {found}",
                metadata,
                fix=_classify_fix(ctx.descriptor, leaves, hits),
            )
        return CheckOutcome(True, f"{len(columns)} column(s) scanned, no personal data", metadata)


def _classify_fix(
    descriptor: ProductDescriptor, leaves: list[Leaf], hits: dict[str, dict[str, int]]
) -> str:
    """What to write in the descriptor for the columns where personal data was found: each
    classified as the kind found (the whole column: a nested field is masked with it)."""
    column_of = {leaf.path: leaf.column for leaf in leaves}
    kinds: dict[str, str] = {}
    for path, found in sorted(hits.items()):
        kinds.setdefault(column_of.get(path, path), next(iter(sorted(found))))
    each = "; ".join(
        f"{column}: config: {{meta: {{classification: 'pii:{kind}', masking: hash}}}}"
        for column, kind in kinds.items()
    )
    return (
        f"classify the column(s) as personal data in {descriptor.source_file} ({each}): they "
        "are then masked on publication; or stop selecting the data. Then build again"
    )


class PiiMaskingVerified(GateCheck):
    name = "pii_masking_verified"
    personal_data = True  # a blocked batch holds personal data: quarantined (products/gate.py)
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
            fix = (
                f"give each listed column a masking rule in {ctx.descriptor.source_file} "
                "(`masking: hash`, `redact`, `truncate` or `tokenise` beside its "
                "classification), or make the model stop returning the clear values; then "
                "build again"
            )
            return CheckOutcome(False, f"personal data not masked: {listing}", metadata, fix=fix)
        return CheckOutcome(True, f"{len(pii)} personal-data column(s) masked", metadata)


register_gate_check(PiiDetection())
register_gate_check(PiiMaskingVerified())
