"""The SQL surface a federated query may use: an explicit, reviewed allowlist.

A function runs only if its name is listed here; everything else (catalog introspection such as
``pg_get_viewdef``, settings, variables, files, sleeping, logging, sequences, plan
serialisation, storage statistics...) is refused with its name and how to ask for it. A name
joins the list after review: it must compute from its arguments alone (no catalog, setting,
variable, file, clock-wait, network or engine state) and must not be able to read or write
anything outside the row it is given.

Left out on purpose: functions whose cost grows with the square of their input (edit
distances: one call on one long value ignores the query timeout until it returns) and ones
that amplify a small input into a huge value (``repeat``).

Names are what DuckDB binds (lower case), which for functions sqlglot knows may differ from the
user's spelling (``date_trunc`` and ``datetrunc`` both regenerate as ``DATE_TRUNC``): the check
runs on the SQL regenerated from the tree, which is the text DuckDB executes.
"""

from __future__ import annotations

# Syntax that regenerates as a call: casts, EXTRACT, CASE helpers, set predicates.
_SYNTAX = """
cast try_cast extract coalesce ifnull nullif if iff greatest least exists unnest grouping
grouping_id row struct_pack list_value array_value map columns
"""
_AGGREGATES = """
count count_star count_if countif sum avg mean min max any_value first last arbitrary
arg_max arg_min argmax argmin max_by min_by arg_max_null arg_min_null arg_max_nulls_last
arg_min_nulls_last array_agg list listagg string_agg group_concat bool_and bool_or bit_and
bit_or bit_xor every product median mode quantile quantile_cont quantile_disc percentile_cont
percentile_disc approx_count_distinct approx_quantile approx_top_k reservoir_quantile
stddev stddev_pop stddev_samp variance var_pop var_samp covar_pop covar_samp corr entropy
kurtosis kurtosis_pop skewness sem mad histogram histogram_exact geomean geometric_mean
favg fsum kahan_sum sumkahan sum_no_overflow weighted_avg wavg regr_avgx regr_avgy regr_count
regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy bitstring_agg
json_group_array json_group_object
"""
_WINDOW = """
row_number rank dense_rank rank_dense percent_rank cume_dist ntile lag lead first_value
last_value nth_value
"""
_MATH = """
abs sign ceil ceiling floor round round_even roundbankers trunc even sqrt cbrt exp ln log
log2 log10 pow power mod fmod divide multiply add subtract fdiv gcd lcm
greatest_common_divisor least_common_multiple factorial gamma lgamma pi degrees radians
sin cos tan cot asin acos atan atan2 sinh cosh tanh asinh acosh atanh isnan isinf isfinite
nextafter signbit bit_count xor random
"""
_STRINGS = """
length len char_length character_length strlen octet_length bit_length lower lcase upper
ucase concat concat_ws substring substr left right left_grapheme right_grapheme
substring_grapheme length_grapheme trim ltrim rtrim lpad rpad replace reverse
position strpos instr contains starts_with ends_with prefix suffix split_part split
string_split str_split string_to_array string_split_regex str_split_regex
regexp_split_to_array translate ascii chr ord unicode format printf strip_accents
nfc_normalize like_escape ilike_escape not_like_escape not_ilike_escape hamming
mismatches jaccard url_encode url_decode bar format_bytes formatreadablesize
formatreadabledecimalsize
"""
_REGEX = """
regexp_matches regexp_full_match regexp_extract regexp_extract_all regexp_replace
regexp_escape
"""
_DATES = """
current_date current_timestamp now today date_trunc datetrunc date_part datepart date_diff
datediff date_sub datesub date_add age year month day hour minute second millisecond
microsecond nanosecond quarter week weekofyear yearweek dayofweek dayofmonth dayofyear
weekday isodow isoyear dayname monthname last_day era century decade millennium julian epoch
epoch_ms epoch_us epoch_ns make_date make_time make_timestamp make_timestamptz
make_timestamp_ms make_timestamp_ns strftime strptime try_strptime to_timestamp
time_bucket timezone timezone_hour timezone_minute to_years to_months to_weeks to_days
to_hours to_minutes to_seconds to_milliseconds to_microseconds to_quarters to_decades
to_centuries to_millennia normalized_interval days_in_month
"""
_NESTED = """
list_extract list_element array_extract element_at list_slice array_slice list_contains
list_has array_contains array_has list_position list_indexof array_position array_indexof
list_concat list_cat array_concat array_cat list_append array_append array_push_back
list_prepend array_prepend array_push_front list_distinct array_distinct list_unique
array_unique list_sort array_sort list_reverse_sort array_reverse_sort list_reverse
array_reverse list_transform array_transform list_apply array_apply apply list_filter
array_filter filter list_reduce array_reduce reduce list_aggregate array_aggregate
list_aggr array_aggr aggregate list_sum list_avg list_min list_max list_count list_first
list_last list_median list_mode list_string_agg list_has_any list_has_all array_has_any
array_has_all list_intersect array_intersect list_zip array_zip len array_length cardinality
flatten list_select array_select list_where array_where list_grade_up array_grade_up
grade_up list_resize array_resize generate_series range list_pack array_pop_back
array_pop_front struct_extract struct_extract_at struct_insert struct_concat
struct_update struct_keys struct_values map_extract map_extract_value map_keys map_values
map_entries map_from_entries map_concat map_contains map_contains_entry map_contains_value
union_extract union_tag union_value
"""
_JSON = """
json json_extract json_extract_string json_extract_path json_extract_path_text json_value
json_exists json_contains json_array_length json_keys json_type json_valid json_structure
json_object json_array json_quote json_merge_patch json_transform json_transform_strict
from_json from_json_strict to_json row_to_json array_to_json json_pretty
"""
_ENCODING = """
md5 md5_number sha1 sha256 hash hex unhex bin unbin to_hex from_hex to_binary from_binary
to_base64 from_base64 base64 encode decode to_base uuid gen_random_uuid uuidv4 uuidv7
typeof can_cast_implicitly enum_range enum_first enum_last enum_code
"""

ALLOWED_FUNCTIONS: frozenset[str] = frozenset(
    " ".join(
        (_SYNTAX, _AGGREGATES, _WINDOW, _MATH, _STRINGS, _REGEX, _DATES, _NESTED, _JSON, _ENCODING)
    ).split()
)

# Table functions in FROM that only compute (no I/O).
ALLOWED_TABLE_FUNCTIONS: frozenset[str] = frozenset({"generate_series", "range", "unnest"})


def function_fix(name: str) -> str:
    return (
        f"rewrite the query without {name}(); if analysts need it, ask the platform team to "
        "review it for the allowlist in mesh_platform/query/surface.py (a function qualifies "
        "when it computes from its arguments alone)"
    )
