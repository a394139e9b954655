-- An incremental product: dbt rebuilds only the recent days (a lookback catches late changes),
-- and the platform republishes only the Iceberg partitions (months of order_date) whose rows
-- changed (descriptor: partition_by). `mesh build` after new orders land costs the change.
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='order_key',
        on_schema_change='append_new_columns',
    )
}}

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
{% if is_incremental() %}
where order_date >= (select max(order_date) from {{ this }}) - interval {{ var('orders_lookback_days', 3) }} day
{% endif %}
