"""A folder of a domain's Python code imported as a package of its own, by path.

A mesh checked out anywhere is loaded as it is on disk (no ``sys.path`` entry, no name shared
with another checkout: the package is named after the folder's path), and the folder's modules
may import each other relatively. Used for a domain's Dagster defs folder and for its Python
products.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def folder_package(prefix: str, folder: Path) -> ModuleType:
    """The package whose modules are ``folder``'s files, named ``<prefix>_<hash of the path>``
    (created once per process)."""
    folder = folder.resolve()
    digest = hashlib.sha1(str(folder).encode(), usedforsecurity=False).hexdigest()[:12]
    name = f"{prefix}_{digest}"
    if (module := sys.modules.get(name)) is None:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        module = importlib.util.module_from_spec(spec)
        module.__file__ = None  # a namespace package: found by its __path__ (Dagster does so)
        sys.modules[name] = module
    return module
