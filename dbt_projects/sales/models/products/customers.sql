select
    customer_key,
    customer_name,
    full_name,
    email,
    phone,
    nation_key,
    market_segment,
    account_balance
from {{ ref('stg_customers') }}
