"""Code location of the domain in this folder: the platform builds it from domain.yaml and the
domain's dbt project (dbt_projects/<domain>/)."""

import dagster as dg

from mesh_platform import domain_definitions


@dg.definitions
def defs() -> dg.Definitions:
    return domain_definitions(__file__)
