"""Mesh-wide settings: one small file (``mesh.yaml``) at the root of the mesh, overridable by env.

Layering follows pyiceberg's habit: file -> environment -> code. Any key can be overridden with a
``MESH_`` variable; nested keys use ``__`` (``MESH_CATALOG__URI=...``). Nothing here is read at
import time: call :func:`load_mesh` where the settings are needed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from mesh_platform.errors import MeshConfigError, StateDirError, format_validation_error
from mesh_platform.formats import read_yaml
from mesh_platform.settings import MeshSettings, build_settings
from mesh_platform.urls import url_secrets

MESH_FILE = "mesh.yaml"
ROOT_ENV = "MESH_ROOT"
POSTGRES_URL_ENV = "MESH_POSTGRES_URL"
# Keys of mesh.yaml that may hold a URL; a password in one of them is refused (secrets come from
# the environment, never from files in the repository).
_URL_KEYS = (("catalog", "uri"), ("catalog", "warehouse"), ("s3_endpoint",))
# State holds clear personal data (domain DuckDB files, raw landings, columns masked at read)
# and secrets: its files are the owner's only, created that way (see private_umask).
PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
log = logging.getLogger(__name__)


def find_root(start: Path | None = None) -> Path:
    """The mesh root: $MESH_ROOT, else the nearest directory upwards holding mesh.yaml."""
    if env_root := os.environ.get(ROOT_ENV):
        root = Path(env_root).resolve()
        if not (root / MESH_FILE).is_file():
            raise MeshConfigError(
                f"{ROOT_ENV}={env_root} has no {MESH_FILE}",
                fix=f"point {ROOT_ENV} at the directory holding {MESH_FILE}, or unset it",
                path=root,
            )
        return root
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / MESH_FILE).is_file():
            return candidate
    raise MeshConfigError(
        f"no {MESH_FILE} found in {here} or any parent directory",
        fix=f"run the command inside a mesh checkout, or set {ROOT_ENV}",
        path=here,
    )


def private_umask() -> None:
    """From now on, files and folders this process and the processes it starts create are their
    owner's only (0600 / 0700).

    Every writer of state honours the umask: DuckDB (the domain files, dbt-duckdb, COPY to
    Parquet), pyiceberg's local FileIO (data, manifests, metadata), sqlite (the catalog and its
    WAL), Dagster (the instance folder) and the platform's own files. Set before the first
    write, they are created private: no window before a chmod. Idempotent; bits the umask
    already masked stay masked.
    """
    current = os.umask(PRIVATE_UMASK)
    os.umask(current | PRIVATE_UMASK)


def make_private_dir(path: Path) -> Path:
    """``path`` and each missing parent, created 0700 (``Path.mkdir(parents=True)`` gives the
    parents the umask's default mode, whatever ``mode`` says)."""
    missing = []
    current = path
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent writer made it
            folder.mkdir(mode=PRIVATE_DIR_MODE)
    return path


def tighten_tree(root: Path) -> int:
    """Remove group and other permissions from ``root`` and everything below it (the root
    first: that alone closes the tree); symbolic links are neither changed nor followed.
    Returns how many entries were tightened."""
    tightened = 0

    def tighten(path: str) -> None:
        nonlocal tightened
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by a writer
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & PRIVATE_UMASK:
                os.chmod(path, stat.S_IMODE(mode) & ~PRIVATE_UMASK)
                tightened += 1

    tighten(str(root))
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            tighten(os.path.join(folder, name))
    return tightened


class Mesh:
    """A loaded mesh: its root, its settings, and every path derived from them.

    One object owns the on-disk layout of the embedded default, so no other module builds a
    state path by hand::

        state/
          dagster/                 DAGSTER_HOME of the persistent instance
          catalog/catalog.db       pyiceberg SqlCatalog (sqlite)
          warehouse/<domain>/...   Iceberg table data, one namespace per domain
          domains/<domain>/raw/    the domain's raw landing zone (Parquet)
          domains/<domain>/<domain>.duckdb
          secrets/pii_salt         the salt of hashed personal data (without MESH_PII_SALT)
          quarantine/records.jsonl batches quarantined for personal data (no values)

    Everything in it is its owner's only (files 0600, folders 0700): see ensure_state_dir.
    """

    def __init__(self, root: Path, settings: MeshSettings) -> None:
        self.root = root
        self.settings = settings

    @cached_property
    def state_dir(self) -> Path:
        path = self.settings.state_dir
        return (path if path.is_absolute() else self.root / path).resolve()

    @property
    def domains_dir(self) -> Path:
        return self.root / "domains"

    @property
    def dbt_projects_dir(self) -> Path:
        return self.root / "dbt_projects"

    @property
    def workspace_file(self) -> Path:
        return self.root / "workspace.yaml"

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster"

    @property
    def catalog_uri(self) -> str:
        return self.settings.catalog.uri or f"sqlite:///{self.state_dir / 'catalog' / 'catalog.db'}"

    @property
    def warehouse(self) -> str:
        # Not Path.as_uri(): it percent-encodes (a space becomes %20) and pyiceberg would then
        # write to a directory literally named with "%20".
        return self.settings.catalog.warehouse or f"file://{self.state_dir / 'warehouse'}"

    @property
    def production(self) -> bool:
        return self.settings.profile == "production"

    @property
    def postgres_url(self) -> str | None:
        """The Dagster instance's PostgreSQL (production profile): only from the environment."""
        return os.environ.get(POSTGRES_URL_ENV) or None

    def check_profile(self) -> None:
        """The settings the profile needs are there (not yet whether the servers answer: see
        mesh_platform.storage.preflight), or one error listing every missing one."""
        if not self.production:
            return
        problems = []
        if not self.postgres_url:
            problems.append(f"{POSTGRES_URL_ENV} (the Dagster instance's PostgreSQL) is not set")
        if not (self.settings.catalog.uri or "").startswith("postgresql"):
            problems.append("MESH_CATALOG__URI is not a postgresql+psycopg2:// URL")
        if not (self.settings.catalog.warehouse or "").startswith("s3://"):
            problems.append("MESH_CATALOG__WAREHOUSE is not an s3://bucket/prefix URL")
        if not os.environ.get("MESH_PII_SALT"):
            # a salt kept in a worker's local state would differ between workers, and masked
            # keys (hashes) would stop joining across runs
            problems.append("MESH_PII_SALT (the salt of hashed personal data) is not set")
        if problems:
            raise MeshConfigError(
                "the production profile is incomplete: " + "; ".join(problems),
                fix="export the variables (scripts/services.sh env prints a working set for "
                "the loopback servers), or use profile: local",
                path=self.root / MESH_FILE,
            )

    def domain_state_dir(self, domain: str) -> Path:
        return self.state_dir / "domains" / domain

    def raw_dir(self, domain: str) -> Path:
        return self.domain_state_dir(domain) / "raw"

    def duckdb_path(self, domain: str) -> Path:
        return self.domain_state_dir(domain) / f"{domain}.duckdb"

    def domain_duckdb(self, domain: str) -> Path:
        """The domain's DuckDB file, its folder created first (owner-only): DuckDB creates the
        file, never its folder, and a domain that lands no raw tables has nothing else that
        creates the folder before its first build opens the file."""
        make_private_dir(self.domain_state_dir(domain))
        return self.duckdb_path(domain)

    @property
    def quarantine_records(self) -> Path:
        """Batches quarantined because they held personal data: one JSON line each (0600)."""
        return self.state_dir / "quarantine" / "records.jsonl"

    def pii_salt(self) -> str:
        """Salt for hashing personal data: MESH_PII_SALT, else a random one kept in
        <state>/secrets/pii_salt (created on first use, readable by the owner only). Never a
        file in the repository."""
        if salt := os.environ.get("MESH_PII_SALT"):
            return salt
        path = self.state_dir / "secrets" / "pii_salt"
        if not path.is_file():
            make_private_dir(path.parent)
            # Created 0600 whatever the umask (O_EXCL: never an existing file or a planted
            # link), written whole, then linked into place: no reader sees a partial salt.
            tmp = path.with_name(f".pii_salt.{os.getpid()}.{secrets.token_hex(4)}")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(tmp, flags, PRIVATE_FILE_MODE)
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32))
                with contextlib.suppress(FileExistsError):  # a concurrent first use won: keep it
                    os.link(tmp, path)
            finally:
                tmp.unlink()
        return path.read_text().strip()

    def dbt_env(self) -> dict[str, str]:
        """Environment the domains' dbt profiles read (see dbt_projects/*/profiles.yml)."""
        return {"MESH_STATE_DIR": str(self.state_dir)}

    def ensure_state_dir(self) -> Path:
        """Create the state layout, its owner's only, or fail with the path and the fix.

        The mesh CLI calls it before writing state (`mesh build`, `prepare`, `ui`): it sets the
        process's umask (:func:`private_umask`), so what the process and its children (dbt,
        the Dagster daemon, run workers) write later is created 0600 / 0700. Writers that may
        run in a process the CLI did not start set the umask themselves (open_catalog, the raw
        landing, the dbt run).
        A state dir left open to group or others (by an older version: 0755 / 0644) is
        tightened, and a warning says so.
        """
        private_umask()
        try:
            make_private_dir(self.state_dir)
            for sub in ("dagster", "catalog", "warehouse", "domains"):
                (self.state_dir / sub).mkdir(exist_ok=True, mode=PRIVATE_DIR_MODE)
            layout = [self.state_dir, *self.state_dir.iterdir()]
            if any(not p.is_symlink() and p.lstat().st_mode & PRIVATE_UMASK for p in layout):
                tightened = tighten_tree(self.state_dir)
                log.warning(
                    "state directory %s was open to group or others (made by an older version "
                    "of the platform?): %d file(s) and folder(s) made owner-only (0600/0700)",
                    self.state_dir,
                    tightened,
                )
            probe = self.state_dir / ".write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StateDirError(
                f"state directory {self.state_dir} is not writable, or cannot be made private "
                f"({exc.strerror or exc})",
                fix="make it owned and writable by the user running the mesh (who keeps it "
                "0700), or point the mesh elsewhere with MESH_STATE_DIR=<dir> "
                f"(or state_dir: in {MESH_FILE})",
                path=self.state_dir,
            ) from exc
        return self.state_dir


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set env vars for a dbt call, then restore them.

    dbt reads ``env_var()`` from the process environment (in-process dbtRunner) or inherits it
    (dagster-dbt copies ``os.environ`` when it starts dbt), so the mesh's values must be there
    for the call, and only for the call: ``MESH_STATE_DIR`` is also a settings override.
    """
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _read_mesh_file(path: Path) -> dict[str, Any]:
    text = path.read_text()  # read here: an unreadable mesh.yaml raises the OSError as is
    syntax = "{what} is not valid YAML: {exc}"
    data = read_yaml(path, what=MESH_FILE, error=MeshConfigError, text=text, syntax=syntax) or {}
    if not isinstance(data, dict):
        raise MeshConfigError(
            f"{MESH_FILE} must be a mapping of settings, got {type(data).__name__}",
            fix="see the keys documented in mesh_platform/config.py (MeshSettings)",
            path=path,
        )
    return data


def _refuse_file_secrets(data: dict[str, Any], path: Path) -> None:

    for keys in _URL_KEYS:
        value: Any = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and "@" in value:
            try:
                has_password = urlsplit(value).password is not None
            except ValueError:
                has_password = False
            if has_password or url_secrets(value):
                raise MeshConfigError(
                    f"{MESH_FILE} key {'.'.join(keys)} holds a password",
                    fix=f"remove it from the file and set the URL in the environment "
                    f"(MESH_{'__'.join(k.upper() for k in keys)})",
                    path=path,
                )


def load_mesh(root: Path | str | None = None, **overrides: Any) -> Mesh:
    """Load mesh.yaml at ``root`` (default: :func:`find_root`), apply env, then ``overrides``."""
    root = Path(root).resolve() if root is not None else find_root()
    path = root / MESH_FILE
    if not path.is_file():
        raise MeshConfigError(
            f"{root} is not a mesh: it has no {MESH_FILE}",
            fix=f"pass the directory that holds {MESH_FILE} (--root / {ROOT_ENV})",
            path=path,
        )
    data = _read_mesh_file(path)
    _refuse_file_secrets(data, path)
    try:
        settings = build_settings(data, overrides)
    except ValidationError as exc:
        raise MeshConfigError(
            f"invalid mesh settings: {format_validation_error(exc)}",
            fix=f"correct the key in {MESH_FILE} or the matching MESH_* environment variable",
            path=path,
        ) from exc
    return Mesh(root, settings)
