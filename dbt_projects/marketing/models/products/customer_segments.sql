with revenue as (
    select
        customer_key,
        count(distinct order_key) as order_count,
        sum(net_revenue) as lifetime_revenue,
        min(order_date) as first_order_date,
        max(order_date) as last_order_date
    from {{ ref('stg_order_revenue') }}
    group by customer_key
),

ranked as (
    select
        revenue.*,
        ntile(3) over (order by lifetime_revenue desc, customer_key) as revenue_tercile
    from revenue
)

select
    geo.customer_key,
    geo.market_segment,
    geo.nation_name,
    geo.region_name,
    cast(coalesce(ranked.order_count, 0) as bigint) as order_count,
    cast(coalesce(ranked.lifetime_revenue, 0) as decimal(18, 2)) as lifetime_revenue,
    ranked.first_order_date,
    ranked.last_order_date,
    case ranked.revenue_tercile
        when 1 then 'high'
        when 2 then 'medium'
        when 3 then 'low'
        else 'inactive'
    end as value_tier
from {{ ref('stg_customer_geo') }} as geo
left join ranked
    on ranked.customer_key = geo.customer_key
