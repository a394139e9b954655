"""`mesh deploy`: Trino catalog and access rules, and Dagster Helm values, generated from the
mesh's descriptors, grants, principals and workspace (no servers: the files are checked as
files, the rules by simulating Trino's first-match evaluation)."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import stat
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import pytest
import sqlglot
import yaml
from click.testing import CliRunner

from mesh_platform.access.masking import mask_expression
from mesh_platform.access.principals import load_principals
from mesh_platform.cli.main import cli
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.deploy.helm import helm_config, k8s_name
from mesh_platform.deploy.trino import access_rules, trino_config, trino_group
from mesh_platform.domain import list_domain_names
from mesh_platform.products.registry import load_directory
from mesh_platform.settings import build_settings
from mesh_platform.workspace import read_locations

PASSWORD = "secretpw"
PRODUCTION_ENV = {
    "MESH_CATALOG__URI": f"postgresql+psycopg2://u:{PASSWORD}@db.example:5432/mesh",
    "MESH_CATALOG__WAREHOUSE": "s3://bucket/wh",
    "MESH_S3_ENDPOINT": "http://127.0.0.1:59000",
    "MESH_PII_SALT": "pepper'salt",
}


@pytest.fixture
def production(prepared_mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> Mesh:
    """The prepared sample mesh with the production profile's catalog and warehouse."""
    for key, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_REGION", raising=False)
    return load_mesh(prepared_mesh.root)


def schema() -> dict[str, Any]:
    path = resources.files("mesh_platform.deploy").joinpath(
        "schemas", "trino-file-access-control.schema.json"
    )
    return json.loads(path.read_text())


def groups_of(config_files: dict[str, Any], user: str) -> set[str]:
    lines = config_files["group.txt"].text.splitlines()
    return {g for g, members in (line.split(":") for line in lines) if user in members.split(",")}


def first_match(rules: list[dict], user: str, groups: set[str], **names: str) -> dict | None:
    """The rule Trino applies: the first whose regexes all match (whole names)."""
    for rule in rules:
        if not re.fullmatch(rule.get("user", ".*"), user):
            continue
        if "group" in rule and not any(re.fullmatch(rule["group"], g) for g in groups):
            continue
        if all(re.fullmatch(rule.get(k, ".*"), v) for k, v in names.items()):
            return rule
    return None


def table_rule(rules: dict, user: str, groups: set[str], address: str) -> dict:
    schema_name, table = address.split(".")
    rule = first_match(rules["tables"], user, groups, catalog="mesh", schema=schema_name,
                       table=table)  # fmt: skip
    assert rule is not None, f"no rule at all for {user} on {address} (Trino denies silently)"
    return rule


def column_rules(rule: dict) -> dict[str, dict]:
    return {c["name"]: c for c in rule.get("columns", [])}


# --- the catalog ---------------------------------------------------------------------------------


def test_catalog_properties_point_at_the_jdbc_catalog_and_warehouse_without_credentials(
    production,
):
    config = trino_config(production)
    text = config.files["catalog/mesh.properties"].text
    props = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert props["connector.name"] == "iceberg"
    assert props["iceberg.catalog.type"] == "jdbc"
    assert props["iceberg.jdbc-catalog.catalog-name"] == "mesh"
    assert props["iceberg.jdbc-catalog.driver-class"] == "org.postgresql.Driver"
    assert props["iceberg.jdbc-catalog.connection-url"] == "jdbc:postgresql://db.example:5432/mesh"
    assert props["iceberg.jdbc-catalog.connection-user"] == "${ENV:MESH_TRINO_CATALOG_USER}"
    assert props["iceberg.jdbc-catalog.connection-password"].startswith("${ENV:")
    assert props["iceberg.jdbc-catalog.default-warehouse-dir"] == "s3://bucket/wh"
    assert props["fs.native-s3.enabled"] == "true"
    assert props["s3.endpoint"] == "http://127.0.0.1:59000"
    assert props["s3.region"] == "us-east-1"
    assert props["s3.path-style-access"] == "true"
    assert props["s3.aws-access-key"] == "${ENV:AWS_ACCESS_KEY_ID}"
    assert props["s3.aws-secret-key"] == "${ENV:AWS_SECRET_ACCESS_KEY}"
    for name, generated in config.files.items():
        if name != "rules.json":  # the salt's file; checked below
            assert PASSWORD not in generated.text, name
            assert "u:" not in generated.text.replace("user:", ""), name
    assert config.warnings == []
    access = config.files["access-control.properties"].text
    assert "access-control.name=file" in access
    assert "security.config-file=/etc/trino/rules.json" in access
    assert "security.refresh-period=1m" in access
    groups = config.files["group-provider.properties"].text
    assert "group-provider.name=file" in groups and "file.group-file=/etc/trino/group.txt" in groups


def test_a_sqlite_catalog_is_written_but_flagged_unusable(prepared_mesh):
    config = trino_config(load_mesh(prepared_mesh.root))
    text = config.files["catalog/mesh.properties"].text
    assert "# NOT USABLE" in text and "Trino cannot use" in text
    assert any("Trino cannot use" in w for w in config.warnings)
    assert any("local to this machine" in w for w in config.warnings)


# --- identities ----------------------------------------------------------------------------------


def test_groups_expand_memberships_transitively(production):
    files = trino_config(production).files
    assert groups_of(files, "carol") == {"customer-care"}
    assert groups_of(files, "sam") == {"domain-sales"}  # user:sam is member_of sales
    assert groups_of(files, "sales") == {"domain-sales"}  # the domain's service user
    assert groups_of(files, "dana") == set()
    for domain in list_domain_names(production):
        assert domain in files["group.txt"].text.split(f"{trino_group(domain)}:")[1].split("\n")[0]


def test_two_principals_on_one_trino_name_are_refused(prepared_mesh, tmp_path):
    (tmp_path / "principals.yaml").write_text("principals:\n  - id: user:sales\n")
    principals = load_principals(tmp_path, set(list_domain_names(prepared_mesh)))
    with pytest.raises(Exception, match="both map to the Trino name 'sales'"):
        access_rules(prepared_mesh, principals=principals)


# --- the rules -----------------------------------------------------------------------------------


def test_rules_validate_against_trinos_format_and_end_with_a_deny(production):
    config = trino_config(production)
    rules = json.loads(config.files["rules.json"].text)
    jsonschema.validate(rules, schema())
    for section in ("catalogs", "schemas", "tables"):
        for rule in rules[section]:
            for key in ("user", "group", "catalog", "schema", "table"):
                if key in rule:
                    re.compile(rule[key])
    assert rules["tables"][-1]["privileges"] == []
    assert all(rules["tables"][-1].get(k, ".*") == ".*" for k in ("user", "catalog", "table"))
    assert rules["catalogs"][-1]["allow"] == "none"
    assert rules["schemas"][-1]["owner"] is False
    assert config.files["rules.json"].mode == 0o600


def test_every_grant_is_a_rule_for_its_principal(production):
    rules, _, _ = access_rules(production)
    directory = load_directory(production)
    checked = 0
    for descriptor in directory.descriptors.values():
        for grant in descriptor.body.grants:
            if grant.expired(dt.date.today()):
                continue
            key, name = (
                ("user", grant.to[5:]) if grant.to.startswith("user:") else
                ("group", trino_group(grant.to))
            )  # fmt: skip
            schema_name, table = descriptor.address.iceberg_identifier
            found = [
                r for r in rules["tables"]
                if key in r and re.fullmatch(r[key], name) and r.get("schema") == schema_name
                and r.get("table") == table
            ]  # fmt: skip
            assert len(found) == 1, f"{grant.to} on {descriptor.address}"
            rule = found[0]
            assert rule["privileges"] == ["SELECT"]
            denied = {c["name"] for c in rule.get("columns", []) if c.get("allow") is False}
            declared = {c.name for c in descriptor.columns}
            assert denied == declared - set(grant.columns or declared)
            if grant.rows:
                sqlglot.parse_one(rule["filter"], read="trino")
                assert "market_segment" in rule["filter"]
            else:
                assert "filter" not in rule
            checked += 1
    assert checked >= 20  # the sample mesh's grants


def test_trino_serves_each_reader_what_the_mesh_serves(production):
    config = trino_config(production)
    rules = json.loads(config.files["rules.json"].text)

    def rule(user: str, address: str) -> dict:
        return table_rule(rules, user, groups_of(config.files, user), address)

    carol = rule("carol", "sales.customers")  # team customer-care, cleared for pii:phone
    assert carol["privileges"] == ["SELECT"]
    assert "mask" not in column_rules(carol).get("phone", {})
    assert column_rules(carol)["account_balance"] == {"name": "account_balance", "allow": False}
    assert sqlglot.parse_one(carol["filter"], read="trino")
    marketing = rule("marketing", "sales.customers")
    assert column_rules(marketing)["phone"]["allow"] is False
    assert "filter" not in marketing
    assert rule("sam", "sales.customers") == {
        "user": "sam", "catalog": "mesh", "schema": "sales", "privileges": ["SELECT"]
    }  # an owner (member_of sales): every column and row  # fmt: skip
    assert rule("alice", "sales.customers")["privileges"] == []  # no grant: the final deny
    assert rule("alice", "marketing.customer_segments")["privileges"] == ["SELECT"]
    for user in config.identities.users:  # the platform's SLA history: every principal
        assert rule(user, "mesh.sla_history")["privileges"] == ["SELECT"]
    assert rule("mallory", "mesh.sla_history")["privileges"] == []  # unknown to the mesh


def test_a_principal_without_any_grant_gets_no_allow_rule(production):
    rules, ids, _ = access_rules(production)
    assert "dana" in ids.users
    allowing = [
        r for r in rules["tables"]
        if r["privileges"] and re.fullmatch(r.get("user", ".*"), "dana") and "group" not in r
        and r.get("schema") != "mesh"
    ]  # fmt: skip
    assert allowing == []


def test_read_masked_columns_are_masked_for_uncleared_readers_only(production, tmp_path):
    # customer-care loses its clearance; dana (cleared for all personal data) joins it.
    (tmp_path / "principals.yaml").write_text(
        "principals:\n"
        "  - id: team:customer-care\n"
        "  - id: user:carol\n    member_of: [team:customer-care]\n"
        "  - id: user:dana\n    member_of: [team:customer-care]\n    clearances: [pii]\n"
    )
    principals = load_principals(tmp_path, set(list_domain_names(production)))
    rules, _, _ = access_rules(production, principals=principals)
    carol = table_rule(rules, "carol", {"customer-care"}, "sales.customers")
    mask = column_rules(carol)["phone"]["mask"]
    sqlglot.parse_one(mask, read="trino")
    dana = table_rule(rules, "dana", {"customer-care"}, "sales.customers")
    assert dana["privileges"] == ["SELECT"] and "mask" not in column_rules(dana).get("phone", {})
    # a member known only to another group provider: the team's own rule
    group = table_rule(rules, "erin", {"customer-care"}, "sales.customers")
    assert column_rules(group)["phone"]["mask"] == mask
    # The Trino mask gives what the mesh's DuckDB mask gives (read back into DuckDB).
    mesh_mask = mask_expression("truncate", '"phone"', None, what="phone")
    back = sqlglot.transpile(mask, read="trino", write="duckdb")[0]
    values = "(VALUES ('+33 1 23 45'), (NULL), ('7')) v(phone)"
    conn = duckdb.connect()
    assert (
        conn.sql(f"SELECT {back} FROM {values}").fetchall()
        == conn.sql(f"SELECT {mesh_mask} FROM {values}").fetchall()
    )


@pytest.mark.parametrize("rule", ["hash", "tokenise"])
def test_salted_masks_hash_like_duckdb(rule):
    from mesh_platform.deploy.trino import to_trino

    salt = "pepper'salt"
    mesh_mask = mask_expression(rule, '"email"', salt, what="email")
    trino = to_trino(mesh_mask, what="email")
    assert "TO_UTF8" in trino  # Trino hashes bytes
    back = sqlglot.transpile(trino, read="trino", write="duckdb")[0]
    values = "(VALUES ('a@example.com'), (NULL), ('é@x.fr')) v(email)"
    conn = duckdb.connect()
    got = conn.sql(f"SELECT {back} FROM {values}").fetchall()
    assert got == conn.sql(f"SELECT {mesh_mask} FROM {values}").fetchall()


def test_an_expired_grant_emits_nothing(prepared_mesh, tmp_path):
    root = tmp_path / "mesh"
    shutil.copytree(prepared_mesh.root, root, ignore=shutil.ignore_patterns("state"))
    descriptor = root / "domains/marketing/products/segment_summary.yml"
    descriptor.write_text(
        descriptor.read_text().replace("expires: 2027-12-31", "expires: 2020-01-01")
    )
    mesh = load_mesh(root)
    rules, _, _ = access_rules(mesh)
    for user, groups in (("sales", {"domain-sales"}), ("sam", {"domain-sales"})):
        rule = table_rule(rules, user, groups, "marketing.segment_summary")
        assert rule["privileges"] == [], user
    assert not [r for r in rules["tables"] if r.get("table") == "segment_summary"]


# --- Helm ----------------------------------------------------------------------------------------


def test_helm_values_one_deployment_per_workspace_location_and_no_secrets(production, monkeypatch):
    monkeypatch.setenv("MESH_POSTGRES_URL", f"postgresql://dagster:{PASSWORD}@pg.example:5433/dg")
    config = helm_config(load_mesh(production.root), image="registry.example:5000/mesh:1.2.3")
    users = yaml.safe_load(config.files["values-user-deployments.yaml"].text)
    locations = read_locations(production)
    assert [d["name"] for d in users["deployments"]] == [k8s_name(loc.name) for loc in locations]
    for deployment, location in zip(users["deployments"], locations, strict=True):
        assert deployment["image"] == {
            "repository": "registry.example:5000/mesh", "tag": "1.2.3", "pullPolicy": "IfNotPresent"
        }  # fmt: skip
        args = deployment["dagsterApiGrpcArgs"]
        assert args[args.index("--module-name") + 1] == location.module
        assert deployment["port"] == 3030
        assert {"name": "MESH_PROFILE", "value": "production"} in deployment["env"]
        assert deployment["envSecrets"] == [{"name": "mesh-production"}]
        assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    values = yaml.safe_load(config.files["values.yaml"].text)
    assert values["dagster-user-deployments"] == {"enabled": True, "enableSubchart": False}
    assert [s["name"] for s in values["dagsterWebserver"]["workspace"]["servers"]] == [
        loc.name for loc in locations
    ]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["postgresqlHost"] == "pg.example"
    assert values["postgresql"]["service"]["port"] == 5433
    assert values["global"]["postgresqlSecretName"]
    assert values["dagsterDaemon"]["enabled"] is True
    limits = values["concurrency"]["runs"]["tagConcurrencyLimits"]
    assert limits == [
        {"key": "mesh/domain", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]
    assert values["concurrency"]["pools"]["defaultLimit"] == 1
    for name, generated in config.files.items():
        assert PASSWORD not in generated.text, name
        assert "pepper" not in generated.text, name
    assert config.warnings == []


def test_helm_adds_the_query_service_with_secret_references_only(production, monkeypatch):
    """mesh-serve.yaml: a Deployment and a Service for `mesh serve`, reading the mesh's secret,
    a TLS secret and a claim for its tokens; its environment is valid mesh settings (TLS on,
    listening off loopback), and nothing secret is written."""
    monkeypatch.setenv("MESH_PII_SALT", "pepper")
    config = helm_config(load_mesh(production.root), image="registry.example:5000/mesh:1.2.3")
    deployment, service = yaml.safe_load_all(config.files["mesh-serve.yaml"].text)
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example:5000/mesh:1.2.3"
    assert container["command"] == ["mesh", "serve"]
    assert container["envFrom"] == [{"secretRef": {"name": "mesh-production"}}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "mesh-serve-tls"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    env = {e["name"]: e["value"] for e in container["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = build_settings({}, {})
    assert settings.serve.host == "0.0.0.0" and settings.serve.tls is not None
    assert str(settings.serve.tls.certificate).startswith("/etc/mesh/tls/")
    assert settings.profile == "production"
    assert "pepper" not in config.files["mesh-serve.yaml"].text


# --- the CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["deploy"], ["deploy", "trino"], ["deploy", "helm"], ["deploy", "s3-policies"]]
)
def test_deploy_commands_have_help(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_cli_writes_the_trino_files(prepared_mesh, tmp_path, monkeypatch):
    monkeypatch.setenv("MESH_PII_SALT", "pepper")
    out = tmp_path / "trino"
    result = CliRunner().invoke(
        cli, ["--root", str(prepared_mesh.root), "deploy", "trino", "--output", str(out),
              "--trino-etc", "/srv/trino/etc"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Trino cannot use" in result.output  # the sqlite default
    for name in ("catalog/mesh.properties", "access-control.properties", "rules.json",
                 "group-provider.properties", "group.txt"):  # fmt: skip
        assert (out / name).is_file(), name
    assert stat.S_IMODE((out / "rules.json").stat().st_mode) == 0o600
    assert "/srv/trino/etc/rules.json" in (out / "access-control.properties").read_text()
    jsonschema.validate(json.loads((out / "rules.json").read_text()), schema())


def test_cli_writes_the_helm_values(prepared_mesh, tmp_path):
    out = tmp_path / "helm"
    result = CliRunner().invoke(
        cli, ["--root", str(prepared_mesh.root), "deploy", "helm", "-o", str(out),
              "--image", "mesh:1.0.0"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "values.yaml").is_file() and (out / "values-user-deployments.yaml").is_file()
    bad = CliRunner().invoke(
        cli, ["--root", str(prepared_mesh.root), "deploy", "helm", "-o", str(out),
              "--image", "no-tag"]
    )  # fmt: skip
    assert bad.exit_code == 1 and "REPO:TAG" in bad.output


@pytest.mark.parametrize("command", ["trino", "helm"])
def test_cli_unwritable_output_is_a_clear_error(prepared_mesh, tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(
        cli, ["--root", str(prepared_mesh.root), "deploy", command, "--output",
              str(blocker / "out")]
    )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot write" in result.output
    assert "choose a writable directory for --output" in result.output
    assert "Traceback" not in result.output
    assert not Path(blocker / "out").exists()


# --- object-store policies ------------------------------------------------------------------------

WAREHOUSE_OBJECTS = "arn:aws:s3:::bucket/wh/"  # PRODUCTION_ENV's s3://bucket/wh
OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                  "s3:ListMultipartUploadParts"}  # fmt: skip


def allowed(policy: dict, actions: set[str]) -> set[str]:
    """The object prefixes (ARN without the trailing '*') ``policy`` allows any of ``actions``."""
    return {
        resource.removesuffix("*")
        for statement in policy["Statement"]
        if statement["Effect"] == "Allow" and actions & set(statement["Action"])
        for resource in statement["Resource"]
        if resource.startswith(WAREHOUSE_OBJECTS)
    }


def consumed_from_others(mesh: Mesh, domain: str) -> set[str]:
    from mesh_platform.dbt.nodes import consumed_products
    from mesh_platform.dbt.project import load_manifest
    from mesh_platform.domain import load_domain

    return {str(a) for a, _ in consumed_products(load_manifest(load_domain(mesh, domain)))}


def test_each_domains_policy_reaches_its_own_prefix_and_its_granted_inputs_only(production):
    from mesh_platform.deploy.s3 import s3_policies

    policies = s3_policies(production)
    domains = list_domain_names(production)
    assert sorted(policies.files) == sorted([*(f"{d}.json" for d in domains), "README.md"])
    assert policies.notes == []  # every sample input is granted
    for domain in domains:
        policy = json.loads(policies.files[f"{domain}.json"].text)  # valid JSON
        assert policy["Version"] == "2012-10-17"
        assert {s["Effect"] for s in policy["Statement"]} == {"Allow"}  # default deny: the rest
        assert all("*" not in a for s in policy["Statement"] for a in s["Action"])  # no s3:*
        own = f"{WAREHOUSE_OBJECTS}{domain}/"
        inputs = {f"{WAREHOUSE_OBJECTS}{a.replace('.', '/')}/" for a in consumed_from_others(
            production, domain)}  # fmt: skip
        assert allowed(policy, OBJECT_ACTIONS - {"s3:GetObject"}) == {
            own,
            f"{WAREHOUSE_OBJECTS}mesh/sla_history/",
        }  # writes: its own prefix, and the SLA history each run appends to
        platform = {f"{WAREHOUSE_OBJECTS}mesh/", f"{WAREHOUSE_OBJECTS}mesh/sla_history/"}
        assert allowed(policy, {"s3:GetObject"}) == {own, *platform, *inputs}
        assert {str(a) for a in policies.inputs[domain]} == consumed_from_others(production, domain)
        for other in set(domains) - {domain}:  # nothing of another domain but granted products
            reachable = {r for r in allowed(policy, OBJECT_ACTIONS) if f"/wh/{other}/" in r}
            assert reachable <= inputs, (domain, other)
        (listing,) = [s for s in policy["Statement"] if "s3:ListBucket" in s["Action"]]
        assert listing["Resource"] == ["arn:aws:s3:::bucket"]
        prefixes = listing["Condition"]["StringLike"]["s3:prefix"]
        assert {f"arn:aws:s3:::bucket/{p.removesuffix('*')}" for p in prefixes} == allowed(
            policy, {"s3:GetObject"}) - {f"{WAREHOUSE_OBJECTS}mesh/sla_history/"}  # fmt: skip
    marketing = json.loads(policies.files["marketing.json"].text)
    assert f"{WAREHOUSE_OBJECTS}sales/orders/" in allowed(marketing, {"s3:GetObject"})
    assert not any("/wh/sales/" in r for r in allowed(marketing, OBJECT_ACTIONS - {"s3:GetObject"}))
    readme = policies.files["README.md"].text
    assert "aws iam put-user-policy" in readme and "mc admin policy create" in readme


def test_an_input_without_a_grant_is_left_out_of_the_policy(production):
    from mesh_platform.deploy.s3 import granted_inputs

    granted, notes = granted_inputs(production, "marketing", today=dt.date(2100, 1, 1))
    assert granted == [] and len(notes) == len(consumed_from_others(production, "marketing"))
    assert all("left out of its policy" in n for n in notes)


def test_the_policies_hold_in_an_s3_that_evaluates_iam(production, monkeypatch):
    """moto evaluates IAM policies on object requests when auth is switched on (it ignores the
    s3:prefix condition of ListBucket, so listing is covered by the structural test only)."""
    import boto3
    from moto import mock_aws
    from moto.core import set_initial_no_auth_action_count

    from mesh_platform.deploy.s3 import s3_policies

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    files = s3_policies(production).files
    objects = ["wh/sales/orders/data/1.parquet", "wh/sales/customers/metadata/v1.json",
               "wh/marketing/customer_segments/data/2.parquet", "wh/sales_eu/x/data/3.parquet",
               "wh/mesh/sla_history/data/4.parquet"]  # fmt: skip
    setup_calls = 3 * 3 + 1 + len(objects)  # users, policies, keys; bucket; objects

    def attempt(s3: Any, op: str, key: str) -> bool:
        try:
            if op == "get":
                s3.get_object(Bucket="bucket", Key=key)
            else:
                s3.put_object(Bucket="bucket", Key=key, Body=b"y")
        except s3.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "AccessDenied", exc
            return False
        return True

    @set_initial_no_auth_action_count(setup_calls)
    @mock_aws
    def outcomes() -> dict[tuple[str, str, str], bool]:
        iam, admin = boto3.client("iam"), boto3.client("s3")
        keys = {}
        for domain in ("sales", "logistics", "marketing"):
            iam.create_user(UserName=f"mesh-{domain}")
            iam.put_user_policy(UserName=f"mesh-{domain}", PolicyName=f"mesh-{domain}",
                                PolicyDocument=files[f"{domain}.json"].text)  # fmt: skip
            keys[domain] = iam.create_access_key(UserName=f"mesh-{domain}")["AccessKey"]
        admin.create_bucket(Bucket="bucket")
        for key in objects:
            admin.put_object(Bucket="bucket", Key=key, Body=b"x")
        seen = {}
        for domain, key in keys.items():
            s3 = boto3.client("s3", aws_access_key_id=key["AccessKeyId"],
                              aws_secret_access_key=key["SecretAccessKey"])  # fmt: skip
            for obj in objects:
                for op in ("get", "put"):
                    seen[(domain, op, obj)] = attempt(s3, op, obj)
        return seen

    seen = outcomes()
    keys_of_domains = ("sales", "logistics", "marketing")  # every run records its SLA history
    allowed_calls = {k for k, ok in seen.items() if ok}
    assert allowed_calls == {
        ("sales", "get", objects[0]), ("sales", "put", objects[0]),
        ("sales", "get", objects[1]), ("sales", "put", objects[1]),
        ("marketing", "get", objects[2]), ("marketing", "put", objects[2]),
        ("marketing", "get", objects[0]), ("marketing", "get", objects[1]),  # granted: read only
        *((d, op, objects[4]) for d in keys_of_domains for op in ("get", "put")),
    }  # fmt: skip


def test_cli_writes_the_s3_policies(production, tmp_path):
    out = tmp_path / "s3"
    result = CliRunner().invoke(
        cli, ["--root", str(production.root), "deploy", "s3-policies", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    for name in ("sales.json", "logistics.json", "marketing.json", "README.md"):
        assert (out / name).is_file(), name
    assert "put-user-policy" in result.output


def test_s3_policies_of_a_local_warehouse_are_a_clear_error(prepared_mesh, tmp_path):
    result = CliRunner().invoke(
        cli, ["--root", str(prepared_mesh.root), "deploy", "s3-policies", "-o", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "not in an object store" in result.output and "s3://" in result.output
    assert "Traceback" not in result.output
