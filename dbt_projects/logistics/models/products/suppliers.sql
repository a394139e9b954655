select supplier_key, supplier_name, nation_key, account_balance
from {{ ref('stg_suppliers') }}
