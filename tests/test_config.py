from pathlib import Path

import pytest

from mesh_platform.config import find_root, load_mesh
from mesh_platform.errors import MeshConfigError, StateDirError


def _mesh_dir(tmp_path: Path, text: str) -> Path:
    (tmp_path / "mesh.yaml").write_text(text)
    return tmp_path


def test_paths_derive_from_state_dir(tmp_path):
    mesh = load_mesh(_mesh_dir(tmp_path, "state_dir: st\n"))
    assert mesh.state_dir == (tmp_path / "st").resolve()
    assert mesh.duckdb_path("sales") == mesh.state_dir / "domains/sales/sales.duckdb"
    assert mesh.raw_dir("sales") == mesh.state_dir / "domains/sales/raw"
    assert mesh.catalog_uri == f"sqlite:///{mesh.state_dir}/catalog/catalog.db"
    assert mesh.warehouse == f"file://{mesh.state_dir}/warehouse"
    assert mesh.dagster_home == mesh.state_dir / "dagster"


def test_environment_overrides_file(tmp_path, monkeypatch):
    root = _mesh_dir(tmp_path, "scale_factor: 0.1\ncatalog:\n  name: mesh\n")
    monkeypatch.setenv("MESH_SCALE_FACTOR", "2")
    monkeypatch.setenv("MESH_CATALOG__URI", "sqlite:////tmp/other.db")
    mesh = load_mesh(root)
    assert mesh.settings.scale_factor == 2
    assert mesh.catalog_uri == "sqlite:////tmp/other.db"
    assert mesh.settings.catalog.name == "mesh"


def test_code_overrides_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MESH_SCALE_FACTOR", "2")
    assert load_mesh(_mesh_dir(tmp_path, ""), scale_factor=0.5).settings.scale_factor == 0.5


def test_unknown_key_names_file_and_key(tmp_path):
    with pytest.raises(MeshConfigError) as err:
        load_mesh(_mesh_dir(tmp_path, "stat_dir: x\n"))
    assert "stat_dir" in str(err.value)
    assert str(tmp_path / "mesh.yaml") in str(err.value)
    assert "fix:" in str(err.value)


def test_invalid_yaml_is_reported(tmp_path):
    with pytest.raises(MeshConfigError, match="not valid YAML"):
        load_mesh(_mesh_dir(tmp_path, "state_dir: [unclosed\n"))


def test_negative_scale_factor_rejected(tmp_path):
    with pytest.raises(MeshConfigError, match="scale_factor"):
        load_mesh(_mesh_dir(tmp_path, "scale_factor: -1\n"))


def test_find_root_walks_up_and_honours_env(tmp_path, monkeypatch):
    root = _mesh_dir(tmp_path, "")
    nested = root / "a" / "b"
    nested.mkdir(parents=True)
    assert find_root(nested) == root.resolve()
    monkeypatch.setenv("MESH_ROOT", str(nested))
    with pytest.raises(MeshConfigError, match="MESH_ROOT"):
        find_root()


def test_unwritable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    mesh = load_mesh(_mesh_dir(tmp_path, f"state_dir: {blocker}/state\n"))
    with pytest.raises(StateDirError) as err:
        mesh.ensure_state_dir()
    assert str(blocker) in str(err.value)
    assert "MESH_STATE_DIR" in str(err.value)


def test_code_overrides_are_validated(tmp_path):
    with pytest.raises(MeshConfigError, match="scale_factor"):
        load_mesh(_mesh_dir(tmp_path, ""), scale_factor=-1)


def test_a_root_without_mesh_yaml_is_refused(tmp_path):
    with pytest.raises(MeshConfigError, match="is not a mesh"):
        load_mesh(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()  # nothing created on the way
