"""Federated SQL over the mesh: products by address, under each reader's grants and masks."""
