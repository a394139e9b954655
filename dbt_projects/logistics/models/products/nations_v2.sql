-- Major version 2 of logistics.nations: consumer-friendly column names, no region surrogate key.
-- Published side by side with v1 (logistics.nations) until v1's sunset date.
select nation_key, nation_name as nation, region_name as region
from {{ ref('stg_nations') }}
