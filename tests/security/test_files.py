"""State that holds clear personal data or secrets is its owner's only (security class 7).

The domain DuckDB files (clear personal data before masking), the raw landings, the warehouse
(columns masked at read are stored in clear), the catalog, the Dagster instance and the secrets
are created 0600 (files) / 0700 (folders) by every writer, DuckDB, dbt-duckdb, pyiceberg,
sqlite, Dagster and the platform's own files, because every process that writes state sets a
restrictive umask first; secrets get explicit modes besides. A state dir an older version left
open is tightened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_platform.config import Mesh, load_mesh


def offenders(root: Path) -> list[str]:
    """Every file under ``root`` readable, writable or executable by group or others, and
    every folder they can enter or list, as 'mode path'. Symbolic links are reported too: the
    state has none, and one could lead a writer out of it."""
    paths = [root]
    for folder, dirs, files in os.walk(root):
        paths += [Path(folder) / name for name in (*dirs, *files)]
    found = []
    for path in paths:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            found.append(f"link {path.relative_to(root)}")
        elif mode & 0o077:
            found.append(f"{stat.S_IMODE(mode):04o} {path.relative_to(root)}")
    return sorted(found)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def test_every_file_and_folder_of_a_built_mesh_is_its_owners_only(attacked_mesh: Mesh):
    state = attacked_mesh.state_dir
    files = {p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file()}
    # what the walk must cover (else it proves nothing): every kind of writer left files
    for expected in (
        "domains/sales/sales.duckdb",  # dbt-duckdb: clear personal data before masking
        "domains/sales/raw/customer_contact.parquet",  # raw landing (DuckDB COPY)
        "catalog/catalog.db",  # sqlite catalog
        "secrets/pii_salt",  # the salt (no MESH_PII_SALT in the build's environment)
        "dagster/dagster.yaml",  # the Dagster instance folder
    ):
        assert expected in files, f"{expected} missing: {sorted(files)[:40]}"
    assert any(f.startswith("warehouse/sales/customers/data/") for f in files)  # pyiceberg
    assert any(f.startswith("warehouse/sales/customers/metadata/") for f in files)
    assert any(f.startswith("warehouse/mesh/sla_history/") for f in files)  # SLA history
    assert any(f.startswith("dagster/storage/") for f in files)  # Dagster's run storage

    found = offenders(state)
    assert found == [], f"{len(found)} entries open to group or others:\n" + "\n".join(found)


def test_ensure_state_dir_creates_the_layout_private_and_sets_the_umask(tmp_path: Path):
    (tmp_path / "mesh.yaml").write_text("state_dir: deep/state\n")
    mesh = load_mesh(tmp_path)
    with umask(0o022):
        mesh.ensure_state_dir()
        assert os.umask(0o077) == 0o077  # what ensure_state_dir left for later writers
        later = mesh.duckdb_path("sales")
        later.parent.mkdir(parents=True)
        later.write_text("x")
    assert offenders(tmp_path / "deep") == []
    assert stat.S_IMODE(later.stat().st_mode) == 0o600


def test_a_state_dir_left_open_by_an_older_version_is_tightened_with_a_notice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    (tmp_path / "mesh.yaml").write_text("state_dir: state\n")
    mesh = load_mesh(tmp_path)
    state = mesh.state_dir
    outside = tmp_path / "shared.txt"
    with umask(0o022):  # what an older version left: 0755 folders, 0644 files
        for folder in ("domains/sales/raw", "warehouse/sales/customers/data", "secrets"):
            (state / folder).mkdir(parents=True)
        for file in ("domains/sales/sales.duckdb", "domains/sales/raw/customer_contact.parquet",
                     "warehouse/sales/customers/data/a.parquet", "catalog.db"):  # fmt: skip
            (state / file).write_text("clear personal data")
        (state / "secrets" / "pii_salt").write_text("s")
        (state / "secrets" / "pii_salt").chmod(0o640)
        outside.write_text("not the mesh's")
        (state / "link").symlink_to(outside)
    assert len(offenders(state)) > 10

    with caplog.at_level(logging.WARNING, logger="mesh_platform.config"):
        mesh.ensure_state_dir()

    assert offenders(state) == ["link link"]  # links are neither changed nor followed
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
    assert stat.S_IMODE((state / "secrets" / "pii_salt").stat().st_mode) == 0o600
    notice = " ".join(r.getMessage() for r in caplog.records)
    assert str(state) in notice and "owner-only" in notice
    caplog.clear()
    mesh.ensure_state_dir()  # nothing left to tighten: no notice
    assert caplog.records == []


def test_the_salt_is_created_owner_only_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Created 0600 in a 0700 folder, not chmod-ed afterwards (no window of exposure)."""
    (tmp_path / "mesh.yaml").write_text("state_dir: state\n")
    mesh = load_mesh(tmp_path)

    def no_chmod(*args, **kwargs):
        raise AssertionError("the salt must be created with its mode, not chmod-ed after")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    with umask(0):
        salt = mesh.pii_salt()
    assert len(salt) == 64 and mesh.pii_salt() == salt
    path = mesh.state_dir / "secrets" / "pii_salt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(mesh.state_dir.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["pii_salt"]  # no temporary file left
