"""The Dagster layer for products: where descriptors, dbt runs and the gate become Dagster assets,
asset checks, materialisations and run events. Nothing below this package imports Dagster."""
