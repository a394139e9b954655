"""A domain's code reads its own data and the products it is granted, never around the grants
(security class 4): another domain's warehouse files, raw area or DuckDB file are out of reach.

Two walls, each tested on its own:

- at load (``mesh check`` and the code location): a model, test, hook or macro that reads
  files, ATTACHes, or runs SQL outside its query is refused, with the model, its file and the fix
  (:mod:`mesh_platform.dbt.isolation`, on the manifest and on sqlglot's tree of compiled SQL);
- at run time, with the load check out of the way: the domain's dbt connection (the profile the
  platform writes) cannot read, write or ATTACH outside the domain's own folder.

Python products get no mesh, path or connection, only ``read()`` under their grants.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import duckdb
import pytest

from mesh_platform.access.principals import AccessDeniedError
from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.python import PinnedReads
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.dbt.checks import manifest_problems
from mesh_platform.dbt.isolation import READ_FIX
from mesh_platform.dbt.lockdown import lock_down, lockdown_statements
from mesh_platform.dbt.project import load_manifest, prepare, resolve_dbt_executable
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import DomainError, MeshError
from mesh_platform.products.python import ProductContext, python_product
from mesh_platform.testing import copy_mesh, run_mesh

STAGING = "dbt_projects/logistics/models/staging"
FIX = READ_FIX.format(domain="logistics")


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def check_json(root: Path) -> tuple[int, list[str]]:
    """`mesh check --domain logistics` as a user runs it: exit code and every message."""
    result = run_mesh(root, "check", "--domain", "logistics", "--format", "json", timeout=600)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    report = json.loads(result.stdout)
    # The report gives each problem's message and fix apart; joined as the refusal says them.
    return result.returncode, [
        f"{v['message']}; fix: {v['fix']}" for v in report["violations"] if v["blocking"]
    ]


def load_refusal(root: Path) -> str:
    """What the logistics code location says when Dagster loads it."""
    from mesh_platform.definitions import domain_definitions

    with pytest.raises(DomainError) as refused:
        domain_definitions(root / "domains" / "logistics" / "definitions.py")
    return str(refused.value)


# --- at load: refused by mesh check and by the code location -----------------------------------


def test_models_hooks_and_macros_that_read_around_grants_are_refused_at_load(tmp_path):
    root = copy_mesh(tmp_path / "mesh")
    state = root / "state"
    sales_file = f"{state}/warehouse/sales/customers/data/00000-0.parquet"
    write(root, f"{STAGING}/stg_read_parquet.sql", f"select * from read_parquet('{sales_file}')\n")
    write(root, f"{STAGING}/stg_from_path.sql",
          f"select * from '{state}/domains/sales/raw/customer_contact.parquet'\n")  # fmt: skip
    write(root, f"{STAGING}/stg_attach.sql",
          f"attach '{state}/domains/sales/sales.duckdb' as sales_db (read_only);\n"
          "select * from sales_db.main.customers\n")  # fmt: skip
    write(root, f"{STAGING}/stg_pre_hook.sql",
          f"{{{{ config(pre_hook=\"attach '{state}/domains/sales/sales.duckdb' as s\") }}}}\n"
          "select 1 as x\n")  # fmt: skip
    write(root, "dbt_projects/logistics/macros/snoop.sql",
          "{% macro snoop() %}{% do run_query(\"select * from glob('" + str(state)
          + "/**')\") %}{% endmacro %}\n")  # fmt: skip
    project = root / "dbt_projects/logistics/dbt_project.yml"
    project.write_text(project.read_text() + f"on-run-start:\n  - \"attach '{state}/x.duckdb'\"\n")

    code, messages = check_json(root)
    assert code == 1
    joined = "\n".join(messages)
    for model, what in [
        ("stg_read_parquet", "calls read_parquet()"),
        ("stg_from_path", "reads the file"),
        ("stg_attach", "holds the statement ATTACH"),
        ("stg_pre_hook", "declares 1 pre_hook/post_hook(s)"),
    ]:
        (message,) = [m for m in messages if f"model {model} " in m and what in m]
        assert f"dbt_projects/logistics/models/staging/{model}.sql" in message
        assert "fix: " in message
    (read,) = [m for m in messages if "model stg_read_parquet " in m]
    assert read.endswith(FIX)  # raw area or a grant: the two legitimate ways to data
    assert "macro snoop (dbt_projects/logistics/macros/snoop.sql) runs SQL from Jinja" in joined
    assert "is a project hook (on-run-start/on-run-end)" in joined

    refusal = load_refusal(root)  # the code location says the same
    for model in ("stg_read_parquet", "stg_from_path", "stg_attach", "stg_pre_hook"):
        assert f"model {model} (dbt_projects/logistics/models/staging/{model}.sql)" in refusal
    assert "macro snoop" in refusal


def test_a_file_read_that_only_the_compiled_sql_shows_is_refused(tmp_path):
    """Jinja can spell a function no text search finds: the compiled SQL is checked on
    sqlglot's tree, and only ref()/source() relations pass."""
    root = copy_mesh(tmp_path / "mesh")
    target = f"{root}/state/warehouse/sales/customers/data/00000-0.parquet"
    macro = "{% macro reader(path) %}{{ 'read_' ~ 'parquet' }}('{{ path }}'){% endmacro %}\n"
    write(root, "dbt_projects/logistics/macros/reader.sql", macro)
    write(root, f"{STAGING}/stg_disguised.sql", f"select * from {{{{ reader('{target}') }}}}\n")

    code, messages = check_json(root)
    assert code == 1
    (message,) = messages
    assert message == (
        "model stg_disguised (dbt_projects/logistics/models/staging/stg_disguised.sql) reads the "
        f"table function read_parquet(); fix: {FIX}"
    )
    assert "stg_disguised" in load_refusal(root)


def test_a_raw_source_pointing_into_another_domains_files_is_refused(tmp_path):
    root = copy_mesh(tmp_path / "mesh")
    sources = root / STAGING / "sources.yml"
    text = sources.read_text()
    old = "/domains/logistics/raw/{name}.parquet"
    assert text.count(old) == 1
    sources.write_text(text.replace(old, "/domains/sales/raw/{name}.parquet"))

    code, messages = check_json(root)
    assert code == 1
    assert messages and all("/domains/sales/raw/" in m for m in messages)
    assert any(m.startswith("source raw.lineitem (dbt_projects/logistics/models/staging/")
               for m in messages)  # fmt: skip


# --- the compiled SQL allowlist, rule by rule (on the prepared sample manifest) ------------------


@pytest.fixture(scope="module")
def logistics(prepared_mesh: Mesh):
    domain = load_domain(prepared_mesh, "logistics")
    return domain, load_manifest(domain), list_domain_names(prepared_mesh)


def with_compiled(manifest: dict, model: str, sql: str) -> dict:
    changed = copy.deepcopy(manifest)
    node = next(n for n in changed["nodes"].values() if n["name"] == model)
    node["compiled_code"] = sql
    return changed


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        ("select * from read_csv_auto('/etc/passwd')", "table function read_csv_auto()"),
        ("select * from parquet_scan('/w/sales/x.parquet')", "table function parquet_scan()"),
        ("select * from iceberg_scan('/w/sales/orders')", "table function iceberg_scan()"),
        ("select * from glob('/w/**')", "table function glob()"),
        ("select * from sqlite_scan('/x.db', 't')", "table function sqlite_scan()"),
        ('select * from "/w/sales/x.parquet"', "reads the file '/w/sales/x.parquet'"),
        ("select content from read_text('/etc/passwd')", "table function read_text()"),
        ("select getenv('AWS_SECRET_ACCESS_KEY') as k", "calls getenv()"),
        ("select current_setting('allowed_directories') as d", "calls current_setting()"),
        ("select * from sales.main.customers", "reads sales.main.customers, which is not one"),
        ("select * from stg_parts", "reads the table 'stg_parts', which is not a ref()"),
        ("attach '/w/sales.duckdb' as s", "compiles to the statement ATTACH"),
        ("copy (select 1) to '/w/sales/x.parquet'", "compiles to the statement COPY"),
        ("load httpfs", "compiles to the statement LOAD"),
        ("set enable_external_access = true", "compiles to the statement SET"),
        ("select 1; attach '/w/sales.duckdb'", "compiles to 2 statements"),
    ],
)
def test_compiled_sql_reads_only_its_ref_and_source_relations(logistics, sql, refusal):
    domain, manifest, known = logistics
    problems = manifest_problems(domain, with_compiled(manifest, "parts", sql), known)
    assert len(problems) == 1, problems
    assert refusal in problems[0]
    assert "model parts (dbt_projects/logistics/models/products/parts.sql)" in problems[0]


def test_sql_fixtures_of_unit_tests_are_checked_like_models(logistics):
    domain, manifest, known = logistics
    changed = copy.deepcopy(manifest)
    changed.setdefault("unit_tests", {})["unit_test.logistics.stg_parts.leak"] = {
        "name": "leak",
        "package_name": "logistics",
        "original_file_path": "models/staging/unit.yml",
        "given": [
            {
                "input": "source('raw', 'part')",
                "format": "sql",
                "rows": "select * from read_parquet('/w/sales/customers/data/x.parquet')",
            }
        ],
        "expect": {"format": "dict", "rows": [{"part_key": 1}]},
    }
    (problem,) = manifest_problems(domain, changed, known)
    assert problem.startswith(
        "unit test leak (dbt_projects/logistics/models/staging/unit.yml) calls read_parquet()"
    )


def test_compiled_sql_may_compute_and_read_its_own_relations(logistics):
    domain, manifest, known = logistics
    node = next(n for n in manifest["nodes"].values() if n["name"] == "parts")
    allowed = (
        node["compiled_code"]
        .rstrip()
        .replace("select", "with extra as (select range as n from range(3)) select", 1)
    )
    changed = with_compiled(manifest, "parts", allowed + " cross join extra")
    assert manifest_problems(domain, changed, known) == []


# --- at run time: the domain's dbt connection, with the load check out of the way -------------


@pytest.fixture(scope="module")
def bypassed(attacked_mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    """A copy of the built mesh (its state too: real files to point at) whose logistics project
    holds models the load check refuses; nothing here runs the check."""
    root = copy_mesh(tmp_path_factory.mktemp("bypassed") / "mesh")
    shutil.copytree(attacked_mesh.state_dir / "warehouse", root / "state" / "warehouse")
    shutil.copytree(attacked_mesh.state_dir / "domains", root / "state" / "domains")
    mesh = load_mesh(root)
    state = mesh.state_dir
    (sales_file,) = sorted((state / "warehouse/sales/customers/data").rglob("*.parquet"))[-1:]
    contacts = state / "domains/sales/raw/customer_contact.parquet"
    sales_db = mesh.duckdb_path("sales")
    for path in (sales_file, contacts, sales_db):
        assert path.is_file()  # a refusal below is the lock, not a missing file
    write(root, f"{STAGING}/leak_read_parquet.sql", f"select * from read_parquet('{sales_file}')")
    write(root, f"{STAGING}/leak_from_path.sql", f"select * from '{contacts}'")
    write(root, f"{STAGING}/leak_attach.sql",
          f"{{{{ config(pre_hook=\"attach '{sales_db}' as sales_db (read_only)\") }}}}\n"
          "select 1 as x")  # fmt: skip
    write(root, f"{STAGING}/leak_run_query.sql",
          "{% if execute %}{% do run_query(\"select * from read_blob('" + str(sales_db)
          + "')\") %}{% endif %}\nselect 1 as x")  # fmt: skip
    write(root, f"{STAGING}/own_raw.sql", "select count(*) as n from {{ source('raw', 'part') }}")
    prepare(mesh, load_domain(mesh, "logistics"))  # links the platform package; no compile
    return mesh


@pytest.mark.e2e
def test_the_domains_dbt_connection_cannot_leave_its_own_folder(bypassed: Mesh):
    """dbt build through the very seam a run uses (run.isolated_dbt: the platform's profile)."""
    from dagster_dbt import DbtCliResource

    from mesh_platform.assets.dbt import isolated_dbt

    domain = load_domain(bypassed, "logistics")
    refused = manifest_problems(domain, load_manifest(domain), list_domain_names(bypassed))
    assert any("model leak_read_parquet" in p for p in refused)  # the load check would refuse
    configured = DbtCliResource(
        project_dir=str(domain.dbt_project_dir), dbt_executable=resolve_dbt_executable(bypassed)
    )
    models = ["leak_read_parquet", "leak_from_path", "leak_attach", "leak_run_query", "own_raw"]
    with isolated_dbt(configured, bypassed, domain) as dbt:
        invocation = dbt.cli(["build", "--select", " ".join(models)], raise_on_error=False).wait()
        results = invocation.get_artifact("run_results.json")["results"]
    outcome = {r["unique_id"].split(".")[-1]: (r["status"], r["message"] or "") for r in results}
    assert outcome["own_raw"][0] == "success"  # the domain's own raw area stays readable
    for model in models[:-1]:
        status, message = outcome[model]
        assert status == "error", (model, outcome[model])
        assert "file system operations are disabled by configuration" in message, message
    with duckdb.connect(str(bypassed.duckdb_path("logistics")), read_only=True) as conn:
        tables = conn.execute("select table_name from information_schema.tables").fetchall()
    built = {name for (name,) in tables}
    assert "own_raw" in built and not built & set(models[:-1])


def test_a_locked_connection_reaches_only_its_folders_and_cannot_be_unlocked(tmp_path):
    own, sibling = tmp_path / "domains" / "sales", tmp_path / "domains" / "sales_eu"
    for folder, value in ((own, 1), (sibling, 2)):
        folder.mkdir(parents=True)
        duckdb.execute(f"copy (select {value} as v) to '{folder}/t.parquet'")
    conn = duckdb.connect(str(own / "sales.duckdb"))
    lock_down(conn, [own])
    assert conn.execute(f"select v from '{own}/t.parquet'").fetchall() == [(1,)]
    for sql in (
        f"select * from '{sibling}/t.parquet'",  # a prefix of the path is not the folder
        f"select * from '{own}/../sales_eu/t.parquet'",
        f"attach '{sibling}/other.duckdb' as other",
        f"copy (select 1) to '{sibling}/out.parquet'",
        "set enable_external_access = true",
        "reset allowed_directories",
        "load httpfs",
    ):
        with pytest.raises(duckdb.Error):
            conn.execute(sql)
    assert lockdown_statements([own])[-1] == "SET lock_configuration = true"


# --- Python products ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_python_product_gets_no_path_and_reads_only_what_it_is_granted(attacked_mesh: Mesh):
    customers = ProductAddress.parse("sales.customers")
    reads = PinnedReads(attacked_mesh, "logistics", (customers,))
    ctx = ProductContext(logging.getLogger("test"), "run", (customers,), reads.read, "logistics")

    @python_product("unused.yml", inputs=["sales.customers"])
    def snoop(ctx: ProductContext):
        return ctx.mesh.duckdb_path("sales")  # the paths a context once carried

    with pytest.raises(AttributeError):
        snoop.fn(ctx)
    public = {name: value for name, value in vars(ctx).items() if not name.startswith("_")}
    assert not any(isinstance(v, Mesh | Path | duckdb.DuckDBPyConnection) for v in public.values())
    with pytest.raises(MeshError, match="does not declare as an input"):
        ctx.read("sales.order_lines")  # granted to logistics, but not declared
    with pytest.raises(AccessDeniedError, match="logistics"):
        ctx.read(customers)  # declared, but logistics holds no grant on it


def test_a_python_products_column_types_cannot_carry_sql(tmp_path):
    from mesh_platform.products.inventory import python_descriptors

    mesh = load_mesh(copy_mesh(tmp_path / "mesh"))
    folder = mesh.domains_dir / "logistics" / "products"
    folder.mkdir()
    (folder / "leak.yml").write_text(
        "name: leak\ndescription: Tries to smuggle SQL through a column type.\nmesh:\n"
        "  purpose: An attack on the contract's DDL.\n"
        "  owner: {team: logistics, contact: logistics@example.com}\n  version: 1.0.0\n"
        "columns:\n"
        "  - {name: x, data_type: \"int); attach '/state/domains/sales/sales.duckdb' as s; --\"}\n"
    )
    (folder / "leak.py").write_text(
        "from mesh_platform.products.python import python_product\n\n"
        "@python_product('leak.yml')\ndef leak(ctx):\n    return None\n"
    )
    from mesh_platform.products.inventory import python_products

    (product,) = python_products(mesh, "logistics")
    _, problems = python_descriptors(load_domain(mesh, "logistics"), [product], set())
    (problem,) = problems
    assert "logistics.leak" in problem and "column x: data_type" in problem
    assert "one DuckDB type" in problem
