"""The platform entry point: turn a domain folder into a Dagster code location.

A domain's ``definitions.py`` is three lines::

    import dagster as dg
    from mesh_platform import domain_definitions

    @dg.definitions
    def defs() -> dg.Definitions:
        return domain_definitions(__file__)

The platform reads ``domain.yaml``, the prepared dbt manifest, and the mesh settings, and
returns the domain's assets (raw landing + dbt models and products + dbt tests as checks)
with the resources they need. Nothing runs at import; ``@dg.definitions`` defers the work until
Dagster loads the code location.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject
from dagster_dbt.asset_utils import DAGSTER_DBT_SELECT_METADATA_KEY, build_dbt_specs
from pydantic import Field

from mesh_platform.access.consumption import consumption_problems
from mesh_platform.assets.checks import check_specs
from mesh_platform.assets.dbt import run_domain_dbt
from mesh_platform.assets.keys import raw_asset_key
from mesh_platform.assets.python import build_python_product_asset
from mesh_platform.assets.translator import MeshDbtTranslator
from mesh_platform.config import Mesh, load_mesh, private_umask
from mesh_platform.dbt.checks import manifest_problems
from mesh_platform.dbt.nodes import consumed_products
from mesh_platform.dbt.project import load_manifest, resolve_dbt_executable
from mesh_platform.domain import Domain, list_domain_names, load_domain
from mesh_platform.errors import DomainError, MeshError
from mesh_platform.governance.evaluate import evaluate_domain
from mesh_platform.orchestration import domain_schedule, inputs_sensor, sla_monitor
from mesh_platform.products.inventory import (
    product_descriptors,
    python_descriptors,
    python_products,
)
from mesh_platform.products.python import PythonProduct
from mesh_platform.resources import MeshResource
from mesh_platform.sources.tpch import TpchSource, land_tpch


class RawLandingConfig(dg.Config):
    scale_factor: float | None = Field(
        default=None,
        gt=0,
        description="TPC-H scale factor to land. Default: scale_factor in mesh.yaml.",
    )
    regenerate: bool = Field(
        default=True,
        description="Re-land a raw file that fails verification (moving it to _quarantine/ "
        "first). False: keep the raw area as found and stop the run, naming each bad file.",
    )


class DbtBuildConfig(dg.Config):
    full_refresh: bool = Field(
        default=False,
        description="Rebuild from nothing: `dbt run --full-refresh` (incremental models "
        "rebuilt from their sources) and every partition of partitioned products republished "
        "through the gate, whatever their recorded fingerprints say.",
    )


def build_raw_assets(domain: Domain) -> dg.AssetsDefinition:
    """The domain's raw landing: its declared TPC-H tables as Parquet in its own raw area,
    each file verified against the landing manifest on every run (re-landed when it fails)."""
    assert domain.spec.raw is not None
    tables = list(domain.spec.raw.tables)
    specs = [
        dg.AssetSpec(
            raw_asset_key(domain.name, table),
            description=f"Raw {table} landed by the {domain.name} domain (TPC-H dbgen"
            + (", synthetic personal data" if table == "customer_contact" else "")
            + ").",
            group_name=domain.name,
            owners=domain.spec.owners,
            kinds={"parquet", "tpch"},
            tags={"mesh/domain": domain.name, "mesh/layer": "raw", "mesh/access": "private"},
        )
        for table in tables
    ]

    @dg.multi_asset(specs=specs, name=raw_landing_op_name(domain.name), pool=domain_pool(domain))
    def _raw_landing(
        context: dg.AssetExecutionContext, config: RawLandingConfig, mesh: MeshResource
    ):
        loaded = mesh.load()
        scale = config.scale_factor or loaded.settings.scale_factor
        try:
            landing = land_tpch(
                loaded.raw_dir(domain.name),
                tables,
                scale,
                source=TpchSource(regenerable=config.regenerate),
                log=context.log.warning,
            )
        except MeshError as exc:  # expected (a bad file that may not be regenerated): no trace
            raise dg.Failure(
                description=f"domain '{domain.name}': {exc}",
                metadata={"raw_dir": str(loaded.raw_dir(domain.name)), "fix": exc.fix},
            ) from None
        context.log.info(
            f"{'landed' if landing.generated else 'verified the existing'} TPC-H SF {scale} "
            f"files in {landing.raw_dir} ({landing.seconds:.1f}s)"
        )
        for table in tables:
            # Verified this run: the counts are the file's footer's, not the manifest's.
            landed = landing.files[table]
            yield dg.MaterializeResult(
                asset_key=raw_asset_key(domain.name, table),
                metadata={
                    "dagster/row_count": landed.rows,
                    "dagster/uri": landing.path(table).as_uri(),
                    "scale_factor": scale,
                    "regenerated": landing.generated,
                    "sha256": landed.sha256,
                    "size_bytes": landed.size_bytes,
                    **({"quarantine": str(landing.quarantine)} if landing.quarantine else {}),
                },
            )

    return _raw_landing


def raw_landing_op_name(domain: str) -> str:
    return f"{domain}_raw_landing"


def dbt_op_name(domain: str) -> str:
    return f"{domain}_dbt"


def build_job_name(domain: str) -> str:
    """The job that materialises a whole domain (what `mesh build` runs)."""
    return f"{domain}_build"


def domain_pool(domain: Domain) -> str:
    """Concurrency pool guarding the domain's DuckDB file (one writer process at a time)."""
    return f"mesh_domain_{domain.name}"


def build_dbt_assets(
    domain: Domain, manifest: Mapping[str, Any], translator: MeshDbtTranslator
) -> dg.AssetsDefinition:
    """The domain's dbt models as one multi-asset, with each product's gate as asset checks.

    This is what ``@dbt_assets`` builds, plus the platform's checks (schema, contract,
    expectations, volume, and any registered by governance) declared on every product.
    """
    project = DbtProject(
        project_dir=domain.dbt_project_dir,
        profiles_dir=domain.dbt_project_dir,
        target_path=Path("target"),
    )
    specs, dbt_checks = build_dbt_specs(
        translator=translator,
        manifest=manifest,
        select="fqn:*",
        exclude="",
        selector="",
        io_manager_key=None,
        project=project,
    )
    mesh_checks = [
        spec for d in translator.descriptors.values() for spec in check_specs(d, contract=True)
    ]

    @dg.multi_asset(
        name=dbt_op_name(domain.name),
        specs=specs,
        check_specs=[*dbt_checks, *mesh_checks],
        can_subset=True,
        op_tags={DAGSTER_DBT_SELECT_METADATA_KEY: "fqn:*"},
        pool=domain_pool(domain),
        allow_arbitrary_check_specs=True,
    )
    def _dbt_models(
        context: dg.AssetExecutionContext,
        config: DbtBuildConfig,
        dbt: DbtCliResource,
        mesh: MeshResource,
    ):
        yield from run_domain_dbt(
            context, dbt, mesh.load(), domain, manifest, translator,
            full_refresh=config.full_refresh,
        )  # fmt: skip

    return _dbt_models


def _load_problems(
    mesh: Mesh,
    domain: Domain,
    manifest: Mapping[str, Any],
    products: Sequence[PythonProduct] | None,
) -> tuple[dict, list, list[str]]:
    """The domain's dbt and Python products, validated, and every load-time problem found."""
    problems = manifest_problems(domain, manifest, list_domain_names(mesh))
    dbt_descriptors = {} if problems else product_descriptors(domain.name, manifest)
    found = python_products(mesh, domain.name)
    if products is not None:  # passed explicitly: each must be one the domain defines
        defined = {p.descriptor_path.resolve() for p in found}
        problems += [
            f"Python product {p.name} ({p.descriptor_path}) is passed to domain_definitions but "
            f"not defined under domains/{domain.name}/products/: define it there"
            for p in products
            if p.descriptor_path.resolve() not in defined
        ]
    python, python_problems = python_descriptors(
        domain, found, {str(d.address) for d in dbt_descriptors.values()}
    )
    problems += python_problems
    if not problems:
        problems += consumption_problems(mesh, domain.name, manifest)
    return dbt_descriptors, python, problems


def _refuse(
    mesh: Mesh, domain: Domain, problems: list[str], descriptors: list, nodes: dict
) -> None:
    """A domain with load-time problems or blocking governance violations does not deploy."""
    if problems:
        raise DomainError(
            domain.name,
            f"{len(problems)} problem(s) in its products (dbt project, descriptors):\n"
            + "\n".join(f"  - {p}" for p in problems),
            fix=f"correct each item above (dbt_projects/{domain.name}, domains/{domain.name}), "
            f"then `mesh prepare --domain {domain.name}`",
            path=domain.dbt_project_dir,
        )
    violations = evaluate_domain(mesh, domain.name, descriptors, nodes)
    if blocking := [v for v in violations if v.blocking]:
        raise DomainError(
            domain.name,
            f"{len(blocking)} governance violation(s); the domain does not deploy until each is "
            "fixed or waived in governance.yaml:\n"
            + "\n".join(f"  - {v.line()}" for v in blocking),
            fix=f"fix each item above, then `mesh check --domain {domain.name}`",
            path=domain.dbt_project_dir,
        )


def _job(domain: Domain, job_name: str) -> Any:
    return dg.define_asset_job(
        job_name,
        selection=dg.AssetSelection.all(),
        description=f"Land, build and publish every asset of the {domain.name} domain.",
        tags={"mesh/domain": domain.name},
        # One process, as `mesh build` runs it: the steps take turns on the domain's one DuckDB
        # writer anyway, and a process per step costs an import of Dagster and the domain's
        # code each (marketing's run launched by the daemon: 171 s multiprocess, SF 0.01).
        executor_def=dg.in_process_executor,
    )


def domain_definitions(
    location_file: str | Path, products: Sequence[PythonProduct] | None = None
) -> dg.Definitions:
    """Definitions of the domain whose code location file is ``location_file``.

    The domain is the folder holding the file (``domains/<domain>/definitions.py`` or its
    ``defs.yaml``); the mesh root is two levels up. Its Python-built products are the
    ``@python_product`` functions under ``domains/<domain>/products/``
    (:func:`mesh_platform.products.inventory.python_products`); ``products``, if passed, must be
    among them.
    """
    code_dir = Path(location_file).resolve().parent
    mesh = load_mesh(code_dir.parent.parent)
    private_umask()  # Dagster processes the mesh CLI did not start write state too
    domain = load_domain(mesh, code_dir.name)
    manifest = load_manifest(domain)
    dbt_descriptors, python, problems = _load_problems(mesh, domain, manifest, products)
    nodes = {str(d.address): manifest["nodes"][uid] for uid, d in dbt_descriptors.items()}
    descriptors = [*dbt_descriptors.values(), *(d for _, d in python)]
    _refuse(mesh, domain, problems, descriptors, nodes)
    translator = MeshDbtTranslator(
        domain,
        catalog_name=mesh.settings.catalog.name,
        descriptors=dbt_descriptors,
        warehouse=mesh.warehouse,
    )
    assets: list[dg.AssetsDefinition] = []
    if domain.spec.raw is not None:
        assets.append(build_raw_assets(domain))
    assets.append(build_dbt_assets(domain, manifest, translator))
    assets += [
        build_python_product_asset(
            product,
            descriptor,
            catalog_name=mesh.settings.catalog.name,
            warehouse=mesh.warehouse,
            schedule=domain.spec.schedule,
        )
        for product, descriptor in python
    ]
    job_name = build_job_name(domain.name)
    consumed = [a for a, _ in consumed_products(manifest)]
    consumed += [a for product, _ in python for a in product.inputs if a.domain != domain.name]
    intervals = mesh.settings.orchestration
    triggers = [
        domain_schedule(domain, job_name),
        inputs_sensor(domain, job_name, consumed, intervals.sensor_interval_seconds),
        sla_monitor(domain, intervals.sla_interval_seconds),
    ]
    return dg.Definitions(
        assets=assets,
        schedules=[t for t in triggers if isinstance(t, dg.ScheduleDefinition)],
        sensors=[t for t in triggers if isinstance(t, dg.SensorDefinition)],
        jobs=[_job(domain, job_name)],
        resources={
            "dbt": DbtCliResource(
                project_dir=str(domain.dbt_project_dir),
                profiles_dir=str(domain.dbt_project_dir),
                dbt_executable=resolve_dbt_executable(mesh),
            ),
            "mesh": MeshResource(root=str(mesh.root)),
        },
        metadata={
            "mesh/domain": domain.name,
            "mesh/kind": domain.spec.kind,
            "mesh/consumes": sorted({str(a) for a, _ in consumed_products(manifest)}),
        },
    )
