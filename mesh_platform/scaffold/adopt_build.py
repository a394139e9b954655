"""`mesh adopt`'s steps on the copied project: build it once in the domain's DuckDB, write the
products' descriptors from what the build shows (:mod:`mesh_platform.scaffold.describe`), and
read them back as the platform will load them. The flow: :mod:`mesh_platform.scaffold.adopt`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import tempfile
from pathlib import Path

import duckdb
import yaml

from mesh_platform.config import Mesh
from mesh_platform.dbt.isolation import isolation_problems
from mesh_platform.dbt.nodes import is_product
from mesh_platform.dbt.project import (
    dbt_state_dir,
    load_manifest,
    platform_profile,
    prepare,
    resolve_dbt_executable,
)
from mesh_platform.domain import Domain
from mesh_platform.files import write_atomically
from mesh_platform.governance.evaluate import evaluate_domain
from mesh_platform.products.descriptor import descriptor_from_node
from mesh_platform.scaffold.describe import (
    ProductFacts,
    descriptor_entry,
    filled,
    find_entry,
    learn,
    spliced,
)
from mesh_platform.scaffold.validate import ScaffoldError, _validate_descriptor


def build_once(mesh: Mesh, domain: Domain) -> str:
    """``dbt build`` of the whole project in the domain's DuckDB, with the platform's profile
    (the lockdown of every run), in a dbt process of its own: its DuckDB connection, locked
    down, must not stay open in this process. Returns what it built (``2 seed, 4 model``...)."""
    dbt = resolve_dbt_executable(mesh)
    with (
        tempfile.TemporaryDirectory(prefix="mesh-adopt-") as scratch,
        platform_profile(mesh, domain) as profiles_dir,
    ):
        env = {**os.environ, **mesh.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        result = subprocess.run(
            [dbt, "build", "--project-dir", str(domain.dbt_project_dir),
             "--profiles-dir", str(profiles_dir), "--profile", domain.name, "--target", "run",
             "--target-path", scratch, "--log-path", str(dbt_state_dir(mesh, domain) / "logs"),
             "--no-use-colors"],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        try:
            run = json.loads((Path(scratch) / "run_results.json").read_text())
        except (OSError, ValueError):
            run = {"results": []}
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).splitlines()
        errors = [ln for ln in lines if "Error" in ln or "error" in ln or "FAIL" in ln][-12:]
        raise ScaffoldError(
            "`dbt build` of the adopted project failed:\n    " + "\n    ".join(errors),
            fix="fix the project (it must build with dbt-duckdb in a DuckDB of its own, reading "
            "only its seeds and models) and run `mesh adopt` again",
        )
    kinds: dict[str, int] = {}
    for item in run.get("results", []):
        kind = str(item.get("unique_id", "?")).split(".")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}(s)" for kind, n in sorted(kinds.items()))


def _product_nodes(domain: Domain, products: list[str]) -> dict[str, dict]:
    """The manifest nodes of the models named as products (of the project itself)."""
    manifest = load_manifest(domain)
    project = (manifest.get("metadata") or {}).get("project_name")
    nodes = {}
    for node in manifest["nodes"].values():
        if node.get("resource_type") == "model" and node.get("package_name") == project:
            nodes.setdefault(node["name"], node)
    for product in products:
        node = nodes.get(product)
        why = None
        if node is None:
            why = "is not a model dbt parsed (a disabled model?)"
        elif node.get("version") is not None:
            why = "is a versioned dbt model; adopt its latest version by hand"
        elif (node.get("config") or {}).get("materialized") == "ephemeral":
            why = "is ephemeral: a product must be a table or a view"
        if why:
            raise ScaffoldError(
                f"model {product!r} (--product) {why}",
                fix="name a model the project materializes",
            )
    return {p: nodes[p] for p in products}


def describe_products(
    mesh: Mesh, domain: Domain, products: list[str], team: str, contact: str | None
) -> tuple[list[ProductFacts], list[Path]]:
    """Learn each product from the built relation and write its descriptor into the
    project's YAML; every written file is validated (TODOs filled with stand-ins) first."""
    nodes = _product_nodes(domain, products)
    project_dir = domain.dbt_project_dir
    texts: dict[Path, str] = {}
    facts = []
    with duckdb.connect(str(mesh.duckdb_path(domain.name)), read_only=True) as conn:
        for product, node in nodes.items():
            found = learn(conn, node, (node["database"], node["schema"], node["alias"]))
            facts.append(found)
            target = found.yaml_file or found.sql_file.parent / f"{product}.yml"
            if target not in texts:
                path = project_dir / target
                texts[target] = path.read_text() if path.is_file() else "version: 2\n\nmodels:\n"
            span = find_entry(texts[target], product)
            today = dt.date.today()
            if span is None:
                entry = descriptor_entry(found, {}, team=team, contact=contact, today=today)
                texts[target] = texts[target].rstrip("\n") + "\n" + entry
            else:
                entry = descriptor_entry(
                    found, span.data, team=team, contact=contact, today=today, pad=span.pad
                )
                texts[target] = spliced(texts[target], span, entry)
    for target, text in texts.items():
        relative = f"dbt_projects/{domain.name}/{target}"
        models = (yaml.safe_load(text) or {}).get("models") or []
        for model in models:
            if isinstance(model, dict) and model.get("name") in nodes:
                _validate_descriptor(
                    domain.name, filled(model), relative, path=project_dir / target
                )
    for target, text in texts.items():
        write_atomically(project_dir / target, text)
    return facts, list(texts)


def read_back(mesh: Mesh, domain: Domain, products: list[str]) -> list[str]:
    """Prepare the described project again and check it as the platform will load it: the
    isolation checks, and each descriptor valid with its TODOs filled; returns what the
    governance policies would still block once the TODOs are filled."""
    prepare(mesh, domain)
    manifest = load_manifest(domain)
    if problems := isolation_problems(domain.name, manifest, raw_dir=mesh.raw_dir(domain.name)):
        raise ScaffoldError(
            "the adopted project reads around the mesh's walls:\n    " + "\n    ".join(problems),
            fix="fix it in the team's project and run `mesh adopt` again",
        )
    descriptors, nodes = [], {}
    for node in manifest["nodes"].values():
        if is_product(node) and node["name"] in products:
            descriptor = descriptor_from_node(domain.name, filled(node))
            descriptors.append(descriptor)
            nodes[str(descriptor.address)] = node
    violations = evaluate_domain(mesh, domain.name, descriptors, nodes)
    return [v.line() for v in violations if v.blocking]
