"""The architecture holds by construction: one-way layers, no import circles, no hidden imports.

The layers are written down once, as import-linter contracts in ``pyproject.toml``
(``[tool.importlinter]``), drawn in ``docs/architecture.md``; this module runs them and adds
what import-linter does not check:

- no circle of imports between any two modules of the package, whatever their layer;
- imports of the package's own modules at the top of a module, never inside a function (a local
  import hides a circle from a reader, though not from the import graph);
- an import inside a function only for a heavy third-party library, with the reason on the line
  (``# heavy: ...``), so a code location or ``mesh --help`` does not pay for what it never uses;
- modules of at most ~450 lines unless their docstring says why, functions of at most 80.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mesh_platform"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
LONG_MODULE_REASON = "Longer than"  # a docstring sentence that starts so says why


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _local_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports inside a function body (TYPE_CHECKING blocks are not executed: not counted)."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child, inner)

    visit(tree, False)
    return found


def _imported(node: ast.Import | ast.ImportFrom) -> str:
    if isinstance(node, ast.ImportFrom):
        return "." * node.level + (node.module or "")
    return node.names[0].name


def _comment_above(lines: list[str], index: int) -> str:
    """The lines of the import block above line ``index`` (its imports and comments): one
    ``# heavy:`` reason covers the imports of its block."""
    found = []
    for line in reversed(lines[:index]):
        stripped = line.strip()
        if not stripped.startswith(("#", "import ", "from ", ")")) and not stripped.endswith(","):
            break
        found.append(stripped)
    return "\n".join(found)


def test_the_import_contracts_hold():
    """import-linter's layers and forbidden contracts (pyproject.toml) pass."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_no_module_imports_itself_through_a_circle():
    graph = grimp.build_graph("mesh_platform", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                connect(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in modules:
        if module not in index:
            connect(module)
    # A package's __init__ importing its own children (to register them) is not a circle of
    # two modules; grimp records it as package -> child, so it would show here if a child
    # imported the package back.
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


# The one exception: the package's public ``from mesh_platform import domain_definitions`` is
# resolved on first use (PEP 562), so ``import mesh_platform`` does not import Dagster.
LAZY_PUBLIC_API = {("mesh_platform", "mesh_platform.definitions")}


def test_the_package_is_imported_at_the_top_of_modules():
    offenders = []
    for name, path in _modules().items():
        for node in _local_imports(ast.parse(path.read_text())):
            target = _imported(node)
            if (name, target) in LAZY_PUBLIC_API:
                continue
            if target.startswith(("mesh_platform", ".")):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, (
        "imports of mesh_platform inside functions (move them to the top; a circle they would "
        "close means the code is in the wrong layer):\n" + "\n".join(offenders)
    )


def test_a_local_import_is_a_heavy_library_with_its_reason():
    offenders = []
    for path in _modules().values():
        lines = path.read_text().splitlines()
        for node in _local_imports(ast.parse("\n".join(lines))):
            text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            if "# heavy:" not in text + _comment_above(lines, node.lineno - 1):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {text.strip()}")
    assert not offenders, (
        "imports inside functions without '# heavy: <why>' (import light libraries at the top; "
        "defer only a heavy one, saying why):\n" + "\n".join(offenders)
    )


def test_modules_and_functions_stay_small():
    too_long = []
    for path in _modules().values():
        text = path.read_text()
        tree = ast.parse(text)
        lines = len(text.splitlines())
        docstring = ast.get_docstring(tree) or ""
        if lines > MAX_MODULE_LINES and LONG_MODULE_REASON not in docstring:
            too_long.append(
                f"{path.relative_to(REPO)}: {lines} lines (split it, or say why in its "
                f"docstring: '{LONG_MODULE_REASON} ... because ...')"
            )
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name}() "
                                    f"is {length} lines")  # fmt: skip
    assert not too_long, "\n".join(too_long)


LIGHT = [  # modules that must not import Dagster: the read path and the light commands
    "mesh_platform.query.engine",
    "mesh_platform.cli.query",
    "mesh_platform.cli.govern",
    "mesh_platform.cli.doctor",
    "mesh_platform.cli.scaffold",
    "mesh_platform.cli.serve",
    "mesh_platform.cli.token",
    "mesh_platform.cli.diff",
]


@pytest.mark.parametrize("module", [*LIGHT, "mesh_platform.definitions"])
def test_read_paths_and_code_locations_do_not_import_what_they_do_not_use(module):
    """The query path and the light commands import no pyiceberg, Dagster or Great
    Expectations; a code location imports no pyiceberg or Great Expectations until a run
    needs them."""
    heavy = {"pyiceberg", "great_expectations", "pandas"}
    if module in LIGHT:
        heavy |= {"dagster", "dagster_dbt", "dbt"}
    probe = (
        f"import sys; import {module}; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    )
    loaded = set(result.stdout.split()) & heavy
    assert not loaded, f"importing {module} loads {sorted(loaded)}"
