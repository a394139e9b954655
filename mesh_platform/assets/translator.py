"""The one seam where dbt manifest nodes become the mesh's Dagster assets.

Rules (no per-model special cases):
- a model with ``access: public`` is a data product: its validated descriptor
  (:mod:`mesh_platform.products.descriptor`) gives the key ``[domain, model(_vN)]``, owners,
  tags, description, column schema with classification, freshness policy; kinds dbt, duckdb and
  iceberg; table name ``<catalog>.<domain>.<model(_vN)>``;
- any other model is internal to the domain: key ``[domain, "internal", model]``;
- a source whose meta names ``mesh_domain`` is another domain's product (an input port): key
  ``[mesh_domain, table]``, the producer's own key, so lineage crosses code locations;
- any other source is the domain's raw landing: key ``[domain, "raw", table]``.
All keys come from :mod:`mesh_platform.addressing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.keys import internal_asset_key, product_key, raw_asset_key
from mesh_platform.assets.specs import freshness_policy, product_metadata, product_tags
from mesh_platform.dbt.nodes import input_domain, is_product
from mesh_platform.domain import Domain
from mesh_platform.products.descriptor import ProductDescriptor


class MeshDbtTranslator(DagsterDbtTranslator):
    """Maps a domain's dbt nodes to asset specs following the rules in the module docstring."""

    def __init__(
        self,
        domain: Domain,
        *,
        catalog_name: str,
        descriptors: Mapping[str, ProductDescriptor],
        warehouse: str = "",
    ) -> None:
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_code_references=False))
        self.domain = domain
        self.catalog_name = catalog_name
        self.descriptors = dict(descriptors)
        self.warehouse = warehouse

    def descriptor(self, props: Mapping[str, Any]) -> ProductDescriptor | None:
        return self.descriptors.get(props.get("unique_id", "")) if is_product(props) else None

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        name = dbt_resource_props["name"]
        if descriptor := self.descriptor(dbt_resource_props):
            return product_key(descriptor.address)
        if producer := input_domain(dbt_resource_props):
            return product_key(ProductAddress.parse(f"{producer}.{name}"))
        if dbt_resource_props.get("resource_type") == "source":
            return raw_asset_key(self.domain.name, name)
        return internal_asset_key(self.domain.name, name)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return self.domain.name

    def get_description(self, dbt_resource_props: Mapping[str, Any]) -> str:
        if descriptor := self.descriptor(dbt_resource_props):
            return f"{descriptor.description.strip()}\n\nPurpose: {descriptor.body.purpose}"
        return super().get_description(dbt_resource_props)

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str] | None:
        if descriptor := self.descriptor(dbt_resource_props):
            return descriptor.body.owner.dagster_owners
        return list(self.domain.spec.owners)

    def get_tags(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, str]:
        if descriptor := self.descriptor(dbt_resource_props):
            return {**super().get_tags(dbt_resource_props), **product_tags(descriptor)}
        return {
            **super().get_tags(dbt_resource_props),
            "mesh/domain": self.domain.name,
            "mesh/layer": "internal",
            "mesh/access": "private",
        }

    def get_metadata(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, Any]:
        metadata = dict(super().get_metadata(dbt_resource_props))
        if descriptor := self.descriptor(dbt_resource_props):
            metadata.update(product_metadata(descriptor, self.catalog_name, self.warehouse))
        return metadata

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: Any
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if descriptor := self.descriptor(self.get_resource_props(manifest, unique_id)):
            spec = spec.merge_attributes(kinds={"iceberg"})
            if policy := freshness_policy(descriptor, self.domain.spec.schedule):
                spec = spec.replace_attributes(freshness_policy=policy)
        return spec
