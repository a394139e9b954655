select
    lines.order_key,
    lines.line_number,
    lines.part_key,
    lines.supplier_key,
    orders.order_date,
    lines.quantity,
    lines.extended_price,
    lines.discount,
    lines.tax,
    cast(lines.extended_price * (1 - lines.discount) as decimal(18, 2)) as net_revenue,
    lines.return_flag,
    lines.line_status
from {{ ref('stg_order_lines') }} as lines
inner join {{ ref('stg_orders') }} as orders
    on orders.order_key = lines.order_key
