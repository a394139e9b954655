select
    l_orderkey as order_key,
    l_linenumber as line_number,
    l_partkey as part_key,
    l_suppkey as supplier_key,
    l_shipdate as ship_date,
    l_commitdate as commit_date,
    l_receiptdate as receipt_date,
    l_shipmode as ship_mode,
    l_shipinstruct as ship_instructions
from {{ source('raw', 'lineitem') }}
