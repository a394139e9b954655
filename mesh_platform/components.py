"""A domain as a Dagster Component, so a domain folder is a dg project.

::

    domains/<domain>/
      domain.yaml             the domain's descriptor
      dg.toml                 the dg project: `dg list defs`, `dg check defs` in this folder
      defs/domain/defs.yaml   type: mesh_platform.components.DomainComponent
      definitions.py          the code location (workspace.yaml, and dg's target):
                              @dg.definitions
                              def defs(): return load_domain_defs(__file__)

:class:`DomainComponent` builds exactly what :func:`mesh_platform.definitions.domain_definitions`
builds for the domain (assets and their checks, schedule, sensors, build job, resources), with the
domain's Python products found where every other caller finds them
(:func:`mesh_platform.products.inventory.python_products`). A domain may add its own components
beside it under ``defs/``; :func:`load_domain_defs` loads them all, as dg does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType

import dagster as dg

from mesh_platform.definitions import domain_definitions
from mesh_platform.domain import DOMAIN_FILE
from mesh_platform.errors import MeshError
from mesh_platform.packages import folder_package

DEFS_FOLDER = "defs"  # a domain's dg defs folder: domains/<domain>/defs/
COMPONENT_FOLDER = "domain"  # the domain component's folder in it: defs/domain/defs.yaml


class DomainComponent(dg.Component, dg.Model, dg.Resolvable):
    """A mesh domain: its raw landing, dbt models and products (with the gate as asset checks),
    Python products, schedule, input sensor, SLA monitor, build job and resources, read from
    the domain's ``domain.yaml``, its prepared dbt manifest and ``mesh.yaml``.

    The domain is the folder above ``defs.yaml`` that holds a ``domain.yaml``; there is nothing
    to configure here."""

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return build_domain_definitions(domain_folder(context.path))


def domain_folder(path: Path) -> Path:
    """The domain folder holding ``path``: the nearest folder, ``path`` included, with a
    ``domain.yaml``."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if (folder / DOMAIN_FILE).is_file():
            return folder
    raise MeshError(
        f"{path} is not inside a domain folder (no {DOMAIN_FILE} in it or above it)",
        fix="keep the domain component's defs.yaml under domains/<domain>/defs/",
        path=path,
    )


def build_domain_definitions(code_dir: Path) -> dg.Definitions:
    """The Definitions of the domain in ``code_dir`` (``domains/<domain>/``); its Python products
    are those :func:`mesh_platform.products.inventory.python_products` finds."""
    return domain_definitions(code_dir / "definitions.py")


def load_domain_defs(location_file: str | Path) -> dg.Definitions:
    """Definitions of the domain whose code location file is ``location_file``
    (``domains/<domain>/definitions.py``): every component of its defs folder, as dg loads them.

    An error of the platform (a :class:`MeshError`: a broken product, a governance violation)
    is raised as it is rather than inside Dagster's component-tree error, so each command says
    the same whichever way the domain is loaded.
    """
    code_dir = Path(location_file).resolve().parent
    tree = dg.ComponentTree.from_module(defs_module=_defs_module(code_dir), project_root=code_dir)
    try:
        with warnings.catch_warnings():
            # Dagster's own beta features the tree uses (code references to defs.yaml, sensor
            # owners): not the domain team's to act on, so not printed on every load.
            warnings.simplefilter("ignore", dg.BetaWarning)
            warnings.simplefilter("ignore", dg.PreviewWarning)
            return tree.build_defs()
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, MeshError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def _defs_module(code_dir: Path) -> ModuleType:
    """The domain's defs folder as a package, found by path (a mesh checked out anywhere is
    loaded as it is on disk), under a module name of its own."""
    folder = code_dir / DEFS_FOLDER
    if not folder.is_dir():
        raise MeshError(
            f"domain '{code_dir.name}' has no {DEFS_FOLDER}/ folder ({folder})",
            fix=f"add {DEFS_FOLDER}/{COMPONENT_FOLDER}/defs.yaml with "
            "`type: mesh_platform.components.DomainComponent` (see another domain)",
            path=folder,
        )
    return folder_package(f"_mesh_defs_{code_dir.name}", folder)
