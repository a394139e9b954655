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
from dagster_dbt import DbtCliResource
from dagster_dbt.asset_utils import DAGSTER_DBT_SELECT_METADATA_KEY, build_dbt_specs
from pydantic import Field

from mesh_platform.access.consumption import consumption_problems
from mesh_platform.addressing import raw_asset_key
from mesh_platform.config import load_mesh, private_umask
from mesh_platform.dbt.checks import manifest_problems
from mesh_platform.dbt.project import dbt_project, load_manifest, resolve_dbt_executable
from mesh_platform.dbt.run import run_domain_dbt
from mesh_platform.dbt.translator import (
    MeshDbtTranslator,
    consumed_products,
    product_descriptors,
)
from mesh_platform.domain import Domain, list_domain_names, load_domain
from mesh_platform.errors import DomainError, MeshError
from mesh_platform.governance import data as _data_policies  # noqa: F401  (registers gate checks)
from mesh_platform.governance.evaluate import evaluate_domain
from mesh_platform.orchestration import domain_schedule, inputs_sensor, sla_monitor
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.gate import check_specs
from mesh_platform.products.python import PythonProduct, build_python_product_asset
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
        description="Rebuild from nothing: `dbt build --full-refresh` (incremental models "
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
    project = dbt_project(domain)
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


def python_descriptors(
    domain: Domain, products: Sequence[PythonProduct], taken: set[str]
) -> tuple[list[tuple[PythonProduct, ProductDescriptor]], list[str]]:
    """Validated descriptors of the domain's Python products, and every problem found."""
    found, problems = [], []
    for product in products:
        try:
            descriptor = product.descriptor(domain.code_dir.parent.parent)
        except MeshError as exc:
            problems.append(f"{exc.what} (fix: {exc.fix})")
            continue
        if descriptor.domain != domain.name:
            problems.append(
                f"Python product {descriptor.address} is defined in domains/{descriptor.domain}/ "
                f"but passed to domain '{domain.name}': a domain publishes only its own products"
            )
        elif str(descriptor.address) in taken:
            problems.append(
                f"product {descriptor.address} ({descriptor.source_file}) is also a dbt product "
                "of this domain: one address, one product"
            )
        else:
            taken.add(str(descriptor.address))
            found.append((product, descriptor))
    return found, problems


def domain_definitions(
    location_file: str | Path, products: Sequence[PythonProduct] = ()
) -> dg.Definitions:
    """Definitions of the domain whose code location file is ``location_file``.

    The domain is the folder holding the file (``domains/<domain>/definitions.py``); the mesh root
    is two levels up. ``products`` are the domain's Python-built products (@python_product).
    """
    code_dir = Path(location_file).resolve().parent
    mesh = load_mesh(code_dir.parent.parent)
    private_umask()  # Dagster processes the mesh CLI did not start write state too
    domain = load_domain(mesh, code_dir.name)
    manifest = load_manifest(domain)
    problems = manifest_problems(domain, manifest, list_domain_names(mesh))
    dbt_descriptors = {} if problems else product_descriptors(domain.name, manifest)
    python, python_problems = python_descriptors(
        domain, products, {str(d.address) for d in dbt_descriptors.values()}
    )
    problems += python_problems
    if not problems:
        problems += consumption_problems(mesh, domain.name, manifest)
    if problems:
        raise DomainError(
            domain.name,
            f"{len(problems)} problem(s) in its products (dbt project, descriptors):\n"
            + "\n".join(f"  - {p}" for p in problems),
            fix=f"correct each item above (dbt_projects/{domain.name}, domains/{domain.name}), "
            f"then `mesh prepare --domain {domain.name}`",
            path=domain.dbt_project_dir,
        )
    nodes = {str(d.address): manifest["nodes"][uid] for uid, d in dbt_descriptors.items()}
    violations = evaluate_domain(
        mesh, domain.name, [*dbt_descriptors.values(), *(d for _, d in python)], nodes
    )
    if blocking := [v for v in violations if v.blocking]:
        raise DomainError(
            domain.name,
            f"{len(blocking)} governance violation(s); the domain does not deploy until each is "
            "fixed or waived in governance.yaml:\n"
            + "\n".join(f"  - {v.line()}" for v in blocking),
            fix=f"fix each item above, then `mesh check --domain {domain.name}`",
            path=domain.dbt_project_dir,
        )
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
    triggers = [
        domain_schedule(domain, job_name),
        inputs_sensor(domain, job_name, consumed),
        sla_monitor(domain),
    ]
    return dg.Definitions(
        assets=assets,
        schedules=[t for t in triggers if isinstance(t, dg.ScheduleDefinition)],
        sensors=[t for t in triggers if isinstance(t, dg.SensorDefinition)],
        jobs=[
            dg.define_asset_job(
                job_name,
                selection=dg.AssetSelection.all(),
                description=f"Land, build and publish every asset of the {domain.name} domain.",
                tags={"mesh/domain": domain.name},
            )
        ],
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
