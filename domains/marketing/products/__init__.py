"""Marketing's Python-built products (the dbt-built ones live in dbt_projects/marketing)."""
