select
    order_key,
    customer_key,
    order_status,
    total_price,
    order_date,
    order_priority,
    clerk,
    ship_priority
from {{ ref('stg_orders') }}
