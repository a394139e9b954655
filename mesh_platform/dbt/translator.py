"""The one seam where dbt manifest nodes become the mesh's Dagster assets.

Rules (no per-model special cases):
- a model with ``access: public`` is a data product: key ``[domain, model]``, kinds dbt, duckdb
  and iceberg, table name ``<catalog>.<domain>.<model>``;
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

from mesh_platform.addressing import ProductAddress, internal_asset_key, raw_asset_key
from mesh_platform.domain import Domain

MESH_INPUT_META = "mesh_domain"


def node_meta(props: Mapping[str, Any]) -> dict[str, Any]:
    """A node's meta, from both places dbt keeps it (``meta`` and ``config.meta``)."""
    return {**(props.get("meta") or {}), **((props.get("config") or {}).get("meta") or {})}


def is_product(props: Mapping[str, Any]) -> bool:
    return props.get("resource_type") == "model" and props.get("access") == "public"


def input_domain(props: Mapping[str, Any]) -> str | None:
    """The producing domain of a source that is a mesh input, else None."""
    if props.get("resource_type") != "source":
        return None
    return node_meta(props).get(MESH_INPUT_META)


def product_address(domain: str, props: Mapping[str, Any]) -> ProductAddress | None:
    if is_product(props):
        return ProductAddress(domain, props["name"])
    if producer := input_domain(props):
        return ProductAddress(producer, props["name"])
    return None


class MeshDbtTranslator(DagsterDbtTranslator):
    """Maps a domain's dbt nodes to asset specs following the rules in the module docstring."""

    def __init__(self, domain: Domain, *, catalog_name: str) -> None:
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_code_references=False))
        self.domain = domain
        self.catalog_name = catalog_name

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        name = dbt_resource_props["name"]
        if address := product_address(self.domain.name, dbt_resource_props):
            return address.asset_key
        if dbt_resource_props.get("resource_type") == "source":
            return raw_asset_key(self.domain.name, name)
        return internal_asset_key(self.domain.name, name)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return self.domain.name

    def get_owners(self, dbt_resource_props: Mapping[str, Any]) -> Sequence[str] | None:
        return list(self.domain.spec.owners)

    def get_tags(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, str]:
        product = is_product(dbt_resource_props)
        return {
            **super().get_tags(dbt_resource_props),
            "mesh/domain": self.domain.name,
            "mesh/layer": "product" if product else "internal",
            "mesh/access": "public" if product else "private",
        }

    def get_metadata(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, Any]:
        metadata = dict(super().get_metadata(dbt_resource_props))
        if is_product(dbt_resource_props):
            address = ProductAddress(self.domain.name, dbt_resource_props["name"])
            metadata["mesh/address"] = str(address)
            metadata["dagster/table_name"] = address.table_name(self.catalog_name)
        return metadata

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: Any
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if is_product(self.get_resource_props(manifest, unique_id)):
            spec = spec.merge_attributes(kinds={"iceberg"})
        return spec


def consumed_products(manifest: Mapping[str, Any]) -> list[tuple[ProductAddress, dict]]:
    """(address, source node) for every mesh-input source of a domain's manifest."""
    found = []
    for node in manifest.get("sources", {}).values():
        if producer := input_domain(node):
            found.append((ProductAddress(producer, node["name"]), node))
    return sorted(found, key=lambda item: item[0])
