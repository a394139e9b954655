"""What a mesh of many domains needs from the platform: a domain's code location and its SLA
monitor read their own and their producers' products, never every domain's (N code servers each
reading N domains cost N x N); what an incident told stays known however many recipients it
had; the instance's storage exists before a code server per domain opens it. The figures are
benchmarks/bench_mesh_scale.py's; these are the behaviours behind them."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from mesh_platform.config import load_mesh
from mesh_platform.dbt.project import _read_manifest
from mesh_platform.deploy import topology
from mesh_platform.governance.policy import GovernanceError, load_policy_set
from mesh_platform.instance import create_instance_storage, dagster_yaml
from mesh_platform.products.registry import load_directory
from mesh_platform.sla import alerts
from mesh_platform.sla.events import GateEvent
from mesh_platform.sla.freshness import evaluate_freshness
from mesh_platform.testing_scale import FAN_IN, layered, scale_mesh

LOG = logging.getLogger("test_scale")


def test_a_directory_of_some_domains_reads_only_theirs(prepared_mesh):
    _read_manifest.cache_clear()
    directory = load_directory(prepared_mesh, refresh=False, domains={"sales"})
    assert {a.split(".")[0] for a in directory.descriptors} == {"sales", "mesh"}
    assert "sales.customers" in directory.descriptors
    assert _read_manifest.cache_info().currsize == 0  # descriptors kept, not the manifests


def test_the_sla_monitor_and_the_alerts_read_no_other_domain(prepared_mesh, tmp_path):
    mesh = load_mesh(prepared_mesh.root, state_dir=tmp_path / "state")
    _read_manifest.cache_clear()
    events = evaluate_freshness(mesh, "logistics")
    assert events and {e.address.split(".")[0] for e in events} == {"logistics"}
    assert alerts.recipients(mesh, "sales.customers")[1:] == [("marketing", None)]
    assert _read_manifest.cache_info().currsize == 0


def test_waivers_ask_for_the_products_of_their_domains_only(tmp_path):
    asked = []

    def known(domains):
        asked.append(domains)
        return ["sales.orders"]

    (tmp_path / "governance.yaml").write_text("policies: {}\nwaivers: []\n")
    load_policy_set(tmp_path, known_products=known)
    assert asked == []  # no waiver: no domain read
    (tmp_path / "governance.yaml").write_text(
        "waivers:\n  - {product: sales.nope, policy: access, "
        'reason: "A reason long enough to be one.", expires: 2099-01-01}\n'
    )
    with pytest.raises(GovernanceError, match=r"'sales\.nope', which is not a product"):
        load_policy_set(tmp_path, known_products=known)
    assert asked == [{"sales"}]


def test_an_open_incident_with_many_recipients_is_told_once(prepared_mesh, tmp_path, monkeypatch):
    """More than the 10,000 deliveries the incident file used to keep (the alphabetically first
    were forgotten, and told again on every evaluation)."""
    mesh = load_mesh(prepared_mesh.root, state_dir=tmp_path / "state", alerts={"sinks": []})
    many = [(f"d{i:05d}", None) for i in range(10_050)]
    monkeypatch.setattr(alerts, "recipients", lambda _mesh, _address: many)
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

    def stale(minutes: int) -> GateEvent:
        return GateEvent(t0 + dt.timedelta(minutes=minutes), "sales.customers", "sla_monitor",
                         False, None, {"freshness": False}, ("freshness",), None, 0.0, "old",
                         kind="freshness")  # fmt: skip

    assert len(alerts.alert_on(mesh, [stale(0)], LOG)) == len(many)
    assert alerts.alert_on(mesh, [stale(5)], LOG) == []
    recovered = GateEvent(t0 + dt.timedelta(minutes=10), "sales.customers", "sla_monitor", True,
                          7, {"freshness": True}, (), None, 0.0, "fresh", kind="freshness")  # fmt: skip
    assert len(alerts.alert_on(mesh, [recovered], LOG)) == len(many)
    state = (mesh.state_dir / "sla" / "incidents.json").read_text()
    assert '"sent": []' in state  # the closed incident's deliveries are not kept


def test_the_instance_storage_is_created_before_the_code_servers_start(tmp_path):
    mesh = load_mesh(Path(__file__).resolve().parents[1], state_dir=tmp_path / "state")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml(mesh))
    create_instance_storage(str(home))
    assert (home / "history" / "runs.db").is_file()
    assert (home / "schedules" / "schedules.db").is_file()
    assert "use_threads: true" in dagster_yaml(mesh)  # sensors of N domains side by side


@pytest.mark.parametrize("n", [1, 3, 10, 50])
def test_the_generated_mesh_is_layered(n):
    layers = layered(n)
    assert sum(len(layer) for layer in layers) == n
    assert len(layers) == min(n, 3)
    assert max(map(len, layers)) - min(map(len, layers)) <= 1


def test_a_generated_consumer_reads_its_producers_under_their_grants(tmp_path):
    made = scale_mesh(tmp_path / "mesh", 4)
    assert made.layers == [["d000", "d001"], ["d002"], ["d003"]]
    assert made.inputs == {"d002": ["d000", "d001"][:FAN_IN], "d003": ["d002"]}
    sources = (made.root / "dbt_projects/d002/models/staging/sources.yml").read_text()
    assert "{mesh_domain: d000}" in sources and "{mesh_domain: d001}" in sources
    grants = (made.root / "dbt_projects/d000/models/products/products.yml").read_text()
    assert "{to: d002, " in grants
    assert "TODO(mesh)" not in grants
    assert "kind: consumer-aligned" in (made.root / "domains/d003/domain.yaml").read_text()
    assert "schedule:" not in (made.root / "domains/d003/domain.yaml").read_text()


def test_mesh_up_loads_a_few_code_servers_per_core_at_a_time(tmp_path, monkeypatch):
    """All at once, N servers share the cores and none is ready before nearly all are."""
    mesh = load_mesh(Path(__file__).resolve().parents[1], state_dir=tmp_path / "state")
    (tmp_path / "state" / "topology").mkdir(parents=True)  # services.json is saved there
    servers = [
        topology.Service(f"{topology.CODE_SERVER}d{i:03d}", ["x"], 1000 + i) for i in range(9)
    ]
    loading: set[str] = set()
    most = 0
    checks: dict[str, int] = {}

    def spawn(_mesh, service, _env):
        nonlocal most
        service.pid = 1
        loading.add(service.name)
        most = max(most, len(loading))

    def health(service):
        checks[service.name] = checks.get(service.name, 0) + 1
        if checks[service.name] < 3:
            return False, "loading"
        loading.discard(service.name)
        return True, "serving"

    monkeypatch.setattr(topology, "_spawn", spawn)
    monkeypatch.setattr(topology, "_health", health)
    monkeypatch.setattr(topology, "_alive", lambda service: service.pid is not None)
    monkeypatch.setattr(topology.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(topology.time, "sleep", lambda _s: None)
    said: list[str] = []
    topology._start_servers(mesh, topology.Topology(servers), servers, {}, 60.0, said.append)
    assert most == 2 * topology.LOADING_PER_CORE
    assert len(said) == len(servers) and all("serving on" in s for s in said)
