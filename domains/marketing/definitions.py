"""Code location of the domain in this folder: the components of its defs/ folder (the platform's
domain component, defs/domain/defs.yaml, built from domain.yaml, the domain's dbt project and its
Python products), loaded as `dg` loads them."""

import dagster as dg

from mesh_platform.components import load_domain_defs


@dg.definitions
def defs() -> dg.Definitions:
    return load_domain_defs(__file__)
