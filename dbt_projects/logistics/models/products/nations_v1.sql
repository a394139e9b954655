select nation_key, nation_name, region_key, region_name
from {{ ref('stg_nations') }}
