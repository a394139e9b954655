"""Deployment profiles without servers: which settings each needs, and that secrets never show."""

from __future__ import annotations

import pytest

from mesh_platform.config import load_mesh
from mesh_platform.discovery.standard_fields import safe_uri
from mesh_platform.errors import MeshConfigError
from mesh_platform.storage.warehouse import contains, local_path
from mesh_platform.urls import pg_connect_args, redact, url_secrets

# Passwords as SQLAlchemy accepts them unencoded; urllib would cut the first two at '/' and '#'.
URLS = [
    ("postgresql+psycopg2://mesh:pa/ss@db.example:5432/mesh", "pa/ss"),
    ("postgresql+psycopg2://mesh:p#a?s@db.example/mesh", "p#a?s"),
    ("postgresql+psycopg2://mesh@db.example/mesh?password=s3cret", "s3cret"),
]


@pytest.mark.parametrize(("url", "secret"), URLS)
def test_no_secret_survives_redaction(url, secret):
    assert secret in url_secrets(url)
    for shown in (redact(url), safe_uri(url)):
        assert secret not in shown and "db.example" in shown


def test_connection_arguments_keep_an_unencoded_password():
    args = pg_connect_args(URLS[0][0])
    assert args == {"host": "db.example", "port": 5432, "dbname": "mesh", "user": "mesh",
                    "password": "pa/ss"}  # fmt: skip


@pytest.mark.parametrize(("url", "secret"), URLS)
def test_a_password_in_mesh_yaml_is_refused(tmp_path, url, secret):
    (tmp_path / "mesh.yaml").write_text(f"catalog:\n  uri: '{url}'\n")
    with pytest.raises(MeshConfigError) as err:
        load_mesh(tmp_path)
    assert "catalog.uri holds a password" in str(err.value)
    assert "MESH_CATALOG__URI" in err.value.fix
    assert secret not in str(err.value)


def test_the_production_profile_lists_every_missing_setting(tmp_path, monkeypatch):
    (tmp_path / "mesh.yaml").write_text("profile: production\n")
    mesh = load_mesh(tmp_path)
    with pytest.raises(MeshConfigError) as err:
        mesh.check_profile()
    for missing in ("MESH_POSTGRES_URL", "MESH_CATALOG__URI", "MESH_CATALOG__WAREHOUSE",
                    "MESH_PII_SALT"):  # fmt: skip
        assert missing in err.value.what
    monkeypatch.setenv("MESH_POSTGRES_URL", "postgresql+psycopg2://u:pw@h/db")
    monkeypatch.setenv("MESH_CATALOG__URI", "postgresql+psycopg2://u:pw@h/db")
    monkeypatch.setenv("MESH_CATALOG__WAREHOUSE", "s3://bucket/wh")
    monkeypatch.setenv("MESH_PII_SALT", "salt")
    load_mesh(tmp_path).check_profile()  # complete: no error


def test_the_local_profile_needs_nothing(tmp_path):
    (tmp_path / "mesh.yaml").write_text("state_dir: state\n")
    mesh = load_mesh(tmp_path)
    mesh.check_profile()
    assert not mesh.production and mesh.warehouse.startswith("file://")


def test_warehouse_locations():
    assert contains("s3://b/wh", "s3://b/wh/sales/orders/data/x.parquet")
    assert not contains("s3://b/wh", "s3://b/wh2/x.parquet")
    assert not contains("s3://b/wh", "s3://b/wh/../other/x.parquet")
    assert not contains("s3://b/wh", "s3://other/wh/x.parquet")
    # a plain local path is a path: '#', '?' and '%20' are characters of its name
    assert str(local_path("/data/a#b?c%20d.parquet")) == "/data/a#b?c%20d.parquet"
    assert str(local_path("file:///data/a%20b")) == "/data/a b"
