"""Code location of the domain in this folder: the platform builds it from domain.yaml, the
domain's dbt project (dbt_projects/<domain>/) and its Python-built products."""

import dagster as dg

from domains.marketing.products.segment_summary import segment_summary
from mesh_platform import domain_definitions


@dg.definitions
def defs() -> dg.Definitions:
    return domain_definitions(__file__, products=[segment_summary])
