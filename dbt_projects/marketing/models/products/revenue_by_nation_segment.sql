select
    rev.order_year,
    geo.region_name,
    geo.nation_name,
    geo.market_segment,
    cast(count(distinct rev.order_key) as bigint) as order_count,
    cast(count(distinct rev.customer_key) as bigint) as customer_count,
    cast(sum(rev.net_revenue) as decimal(18, 2)) as net_revenue
from {{ ref('stg_order_revenue') }} as rev
inner join {{ ref('stg_customer_geo') }} as geo
    on geo.customer_key = rev.customer_key
group by all
