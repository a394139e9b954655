select
    order_key,
    line_number,
    part_key,
    supplier_key,
    ship_date,
    commit_date,
    receipt_date,
    ship_mode,
    ship_instructions,
    receipt_date > commit_date as is_late,
    cast(greatest(date_diff('day', commit_date, receipt_date), 0) as integer) as days_late,
    cast(date_diff('day', ship_date, receipt_date) as integer) as transit_days
from {{ ref('stg_shipments') }}
