-- Customers with segment and geography only: marketing needs no contact details (PII).
select
    c.customer_key,
    c.market_segment,
    n.nation_name,
    n.region_name
from {{ source('sales', 'customers') }} as c
inner join {{ source('logistics', 'nations') }} as n
    on n.nation_key = c.nation_key
