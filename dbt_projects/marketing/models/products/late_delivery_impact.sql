-- The cross-domain question of the article: what do late deliveries (logistics) cost in
-- revenue (sales), by ship mode and customer region?
with lines as (
    select
        rev.order_year,
        geo.region_name,
        ship.ship_mode,
        ship.is_late,
        ship.days_late,
        rev.net_revenue
    from {{ ref('stg_order_revenue') }} as rev
    inner join {{ source('logistics', 'shipments') }} as ship
        on ship.order_key = rev.order_key
        and ship.line_number = rev.line_number
    inner join {{ ref('stg_customer_geo') }} as geo
        on geo.customer_key = rev.customer_key
)

select
    order_year,
    region_name,
    ship_mode,
    cast(count(*) as bigint) as line_count,
    cast(count(*) filter (where is_late) as bigint) as late_line_count,
    cast(sum(net_revenue) as decimal(18, 2)) as net_revenue,
    cast(coalesce(sum(net_revenue) filter (where is_late), 0) as decimal(18, 2)) as late_net_revenue,
    round(count(*) filter (where is_late) / count(*), 4) as late_share,
    round(coalesce(avg(days_late) filter (where is_late), 0), 2) as avg_days_late
from lines
group by all
