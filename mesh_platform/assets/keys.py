"""Dagster asset keys of the mesh's names (the naming rules themselves live in addressing.py).

product  sales.orders       -> AssetKey(["sales", "orders"])
private  sales/stg_orders   -> AssetKey(["sales", "internal", "stg_orders"])
raw      sales/orders       -> AssetKey(["sales", "raw", "orders"])
"""

from __future__ import annotations

import dagster as dg

from mesh_platform.addressing import ProductAddress, internal_key_path, raw_key_path


def product_key(address: ProductAddress) -> dg.AssetKey:
    return dg.AssetKey(list(address.key_path))


def raw_asset_key(domain: str, table: str) -> dg.AssetKey:
    return dg.AssetKey(list(raw_key_path(domain, table)))


def internal_asset_key(domain: str, model: str) -> dg.AssetKey:
    return dg.AssetKey(list(internal_key_path(domain, model)))
