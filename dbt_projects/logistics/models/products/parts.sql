select part_key, part_name, manufacturer, brand, part_type, size, container, retail_price
from {{ ref('stg_parts') }}
