"""A mesh of N domains for scale tests and benchmarks, made with the real scaffolding.

``scale_mesh(dest, n)`` starts from the sample mesh's settings (``mesh.yaml``, governance,
contracts) with no domain, then calls what ``mesh new domain`` and ``mesh new product`` call
(:mod:`mesh_platform.scaffold`) for each domain, and edits the scaffolded files the way a team
would. Domains sit in a layered graph of ``LAYERS`` layers:

- layer 0 is source-aligned: the scaffolded domain as it comes (a schedule, TPC-H ``nation``
  and ``region`` landed raw, the example product ``regions``);
- a domain of layer k > 0 is consumer-aligned: its ``regions`` reads the ``regions`` of (at
  most) ``FAN_IN`` domains of layer k - 1 through mesh-input sources, and those producers
  grant it in their descriptors, so ``mesh check`` and ``mesh prepare`` accept it; its sensor
  runs it when one of them publishes.

Every domain also has ``EXTRA_PRODUCTS`` skeletons of ``mesh new product``, their
``TODO(mesh):`` values filled. The data is tiny (TPC-H's 5 regions): what is measured is the
platform, not the data. The fan-in is constant, so each domain's own work does not depend on
N: a cost per domain that rises with N is the platform's.

Layer: apps (it scaffolds, as the `mesh` command does).
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mesh_platform import scaffold
from mesh_platform.config import load_mesh
from mesh_platform.files import write_atomically
from mesh_platform.testing import copy_mesh

LAYERS = 3
FAN_IN = 2
EXTRA_PRODUCTS = ("kpis", "notes")
_SETTINGS = ("mesh.yaml", "governance.yaml", "datacontract-config.yaml")


@dataclass
class ScaleMesh:
    """What ``scale_mesh`` made: its root and its layered graph."""

    root: Path
    layers: list[list[str]]
    inputs: dict[str, list[str]] = field(default_factory=dict)  # consumer -> its producers

    @property
    def domains(self) -> list[str]:
        return [d for layer in self.layers for d in layer]

    def consumers_of(self, producer: str) -> list[str]:
        return sorted(c for c, producers in self.inputs.items() if producer in producers)


def domain_name(i: int) -> str:
    return f"d{i:03d}"


def layered(n: int, layers: int = LAYERS) -> list[list[str]]:
    """``n`` domains in ``min(n, layers)`` layers of (nearly) equal width."""
    depth = max(1, min(n, layers))
    return [[domain_name(i) for i in range(n) if i * depth // n == k] for k in range(depth)]


def scale_mesh(dest: Path, n: int) -> ScaleMesh:
    """A mesh of ``n`` scaffolded domains at ``dest`` (see the module docstring)."""
    root = _empty_mesh(dest)
    mesh = load_mesh(root)
    made = ScaleMesh(root, layered(n))
    for i, name in enumerate(made.domains):
        scaffold.new_domain(mesh, name, team=f"t{i:03d}", description=f"Domain {name} of a "
                            f"generated mesh of {n} domains (scale benchmark).")  # fmt: skip
        for product in EXTRA_PRODUCTS:
            scaffold.new_product(mesh, name, product)
            _fill_todos(root / "dbt_projects" / name / "models" / "products" / "products.yml")
    for k, layer in enumerate(made.layers[1:], start=1):
        below = made.layers[k - 1]
        for j, name in enumerate(layer):
            producers = sorted({below[(j + f) % len(below)] for f in range(FAN_IN)})
            made.inputs[name] = producers
            _consume(root, name, producers)
            for producer in producers:
                _grant(root, producer, name)
    return made


def _empty_mesh(dest: Path) -> Path:
    """The sample mesh's settings, no domain, no principal."""
    copy_mesh(dest)
    for folder in ("domains", "dbt_projects"):
        shutil.rmtree(dest / folder)
        (dest / folder).mkdir()
    (dest / "domains" / "__init__.py").write_text("")
    (dest / "workspace.yaml").write_text("load_from: []\n")
    (dest / "principals.yaml").write_text("principals:\n")
    return dest


def _fill_todos(path: Path) -> None:
    text = re.sub(
        r"TODO\(mesh\): [^\"\n]*",
        "Generated for the scale benchmark: a key and a label per row.",
        path.read_text(),
    )
    write_atomically(path, text)


_SOURCES = """version: 2

# Mesh inputs: each table is the product <mesh_domain>.<table> (generated: testing_scale.py).
sources:
"""


def _consume(root: Path, name: str, producers: list[str]) -> None:
    """Make ``name`` consumer-aligned: its ``regions`` from its producers' ``regions``."""
    spec = root / "domains" / name / "domain.yaml"
    text = spec.read_text().replace("kind: source-aligned", "kind: consumer-aligned")
    text = re.sub(r"^(# .*\n)?(schedule|raw):.*\n(  .*\n)*", "", text, flags=re.M)
    text = re.sub(r"^# Sample sources.*\n", "", text, flags=re.M)
    write_atomically(spec, text)
    staging = root / "dbt_projects" / name / "models" / "staging"
    sources = _SOURCES + "".join(
        f"  - name: {p}\n    description: Products consumed from the {p} domain.\n"
        f"    config:\n      meta: {{mesh_domain: {p}}}\n    tables:\n      - name: regions\n"
        for p in producers
    )
    write_atomically(staging / "sources.yml", sources)
    union = "\n    union all\n".join(
        f"    select region_key, region_name, nation_count from {{{{ source('{p}', 'regions') }}}}"
        for p in producers
    )
    write_atomically(
        staging / "stg_regions.sql",
        f"select region_key, region_name, sum(nation_count) as nation_count\nfrom (\n{union}\n)"
        " as inputs\ngroup by all\n",
    )


def _grant(root: Path, producer: str, consumer: str) -> None:
    """``producer``'s ``regions`` (its first model) granted to the domain ``consumer``."""
    path = root / "dbt_projects" / producer / "models" / "products" / "products.yml"
    text = path.read_text()
    match = re.search(r"^( +)- \{to: \"team:[^\n]*\n", text, flags=re.M)
    assert match is not None, f"no grant in {path}"
    expires = (dt.date.today() + dt.timedelta(days=365)).isoformat()
    line = (f'{match.group(1)}- {{to: {consumer}, purpose: "Generated consumer of the scale '
            f'benchmark.", expires: {expires}}}\n')  # fmt: skip
    write_atomically(path, text[: match.end()] + line + text[match.end() :])
