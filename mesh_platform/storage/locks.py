"""The publication lock: one publisher of a product at a time.

Write-audit-publish, maintenance, repair, the SLA history's writers and the late acknowledger
take it. PostgreSQL: a session-level advisory lock keyed by catalog and address (released at
the end, or by the server when a killed holder's connection drops). sqlite (one machine): an
exclusive ``flock`` on a lock file beside the catalog database (released by the kernel when a
killed holder's process ends). Other catalogs have none: publishers race optimistically and
restage.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mesh_platform.addressing import ProductAddress
from mesh_platform.errors import ConcurrentPublishError

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog

PRODUCT_LOCK_TIMEOUT = "15min"
PRODUCT_LOCK_TIMEOUT_S = 15 * 60  # as PRODUCT_LOCK_TIMEOUT
LOCK_POLL_S = 0.05


@contextlib.contextmanager
def product_lock(
    catalog: SqlCatalog, address: ProductAddress, *, timeout: float | None = None
) -> Iterator[bool]:
    """One publisher of a product at a time, so that concurrent publishers all publish instead
    of exhausting their attempts. PostgreSQL: a session-level advisory lock keyed by catalog and
    address (released at the end, or by the server when a killed publisher's connection drops).
    sqlite (one machine): an exclusive ``flock`` on a lock file beside the catalog database
    (released by the kernel when a killed publisher's process ends). Other catalogs: none;
    publishers race optimistically and restage (write_audit_publish's attempts).

    Waits up to ``timeout`` seconds (default: PRODUCT_LOCK_TIMEOUT, what publishers wait; 0:
    one try), then raises ConcurrentPublishError. Yields whether the lock excludes the other
    holders (False on a catalog without one): ``mesh maintain`` takes it too, and only then
    may it treat an audit branch it finds as left by a finished or dead run."""
    wait = PRODUCT_LOCK_TIMEOUT_S if timeout is None else max(0.0, timeout)
    dialect = catalog.engine.dialect.name
    if dialect == "sqlite":
        with _file_lock(catalog, address, timeout=wait) as exclusive:
            yield exclusive
        return
    if dialect != "postgresql":
        yield False
        return
    with _advisory_lock(catalog, address, wait):
        yield True


@contextlib.contextmanager
def _advisory_lock(catalog: SqlCatalog, address: ProductAddress, wait: float) -> Iterator[None]:
    """PostgreSQL's session-level advisory lock of the product, waiting up to ``wait`` s."""
    from sqlalchemy import text  # heavy: SQLAlchemy, only a PostgreSQL catalog gets here
    from sqlalchemy.exc import DBAPIError

    digest = hashlib.blake2b(f"{catalog.name}:{address}".encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "big", signed=True)
    busy = ConcurrentPublishError(
        f"product {address}: another publisher held it for over {_seconds(wait)}",
        fix="look for a stuck run of the product's domain (Dagster UI), then run again",
    )
    with catalog.engine.connect() as connection:
        try:
            if wait <= 0:  # lock_timeout 0 would mean: wait forever
                taken = connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
                ).scalar()
                connection.commit()
                if not taken:
                    raise busy
            else:
                connection.execute(text(f"SET lock_timeout = '{max(1, int(wait * 1000))}ms'"))
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                connection.execute(text("RESET lock_timeout"))  # the connection returns to a pool
                connection.commit()
        except DBAPIError as exc:
            if type(exc.orig).__name__ == "LockNotAvailable":
                raise busy from exc
            raise
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
            except DBAPIError:
                # The connection is gone (so is its session lock): never let this replace the
                # publication's own outcome; the pool must not reuse the connection.
                connection.invalidate()


def _seconds(wait: float) -> str:
    return PRODUCT_LOCK_TIMEOUT if wait == PRODUCT_LOCK_TIMEOUT_S else f"{wait:g}s"


@contextlib.contextmanager
def _file_lock(
    catalog: SqlCatalog, address: ProductAddress, *, timeout: float = PRODUCT_LOCK_TIMEOUT_S
) -> Iterator[bool]:
    """``flock`` on ``<catalog dir>/locks/<catalog>.<address>.lock``; yields False (no lock)
    for an in-memory catalog, which no other process can open."""
    database = catalog.engine.url.database
    if not database or database == ":memory:":
        yield False
        return
    folder = Path(database).parent / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(folder / f"{catalog.name}.{address}.lock", "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConcurrentPublishError(
                        f"product {address}: another publisher held it for over "
                        f"{_seconds(timeout)} (lock file {handle.name})",
                        fix="look for a stuck `mesh build` of the product's domain, then run again",
                    ) from None
                time.sleep(LOCK_POLL_S)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
