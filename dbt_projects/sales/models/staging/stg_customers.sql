select
    c.c_custkey as customer_key,
    c.c_name as customer_name,
    contact.full_name,
    contact.email,
    contact.phone,
    c.c_nationkey as nation_key,
    c.c_mktsegment as market_segment,
    c.c_acctbal as account_balance
from {{ source('raw', 'customer') }} as c
left join {{ source('raw', 'customer_contact') }} as contact
    on contact.c_custkey = c.c_custkey
