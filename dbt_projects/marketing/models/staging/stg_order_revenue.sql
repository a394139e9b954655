-- Net revenue per order line with the ordering customer: the join key between the domains.
select
    lines.order_key,
    lines.line_number,
    orders.customer_key,
    orders.order_date,
    cast(year(orders.order_date) as integer) as order_year,
    lines.net_revenue
from {{ source('sales', 'order_lines') }} as lines
inner join {{ source('sales', 'orders') }} as orders
    on orders.order_key = lines.order_key
