"""Reading dbt manifest nodes the mesh's way (no Dagster here: the query path imports it).

- a model with ``access: public`` is a data product;
- a source whose meta names ``mesh_domain`` is another domain's product (an input port).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mesh_platform.addressing import ProductAddress

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


def consumed_products(manifest: Mapping[str, Any]) -> list[tuple[ProductAddress, dict]]:
    """(address, source node) for every mesh-input source of a domain's manifest."""
    found = []
    for node in manifest.get("sources", {}).values():
        if producer := input_domain(node):
            found.append((ProductAddress.parse(f"{producer}.{node['name']}"), node))
    return sorted(found, key=lambda item: item[0])
