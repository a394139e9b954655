"""FolderWatch: a value recomputed exactly when the watched files change (kernel events), so a
long-running reader never serves descriptors older than the last write."""

from __future__ import annotations

import sys
import time

import pytest

from mesh_platform.watching import FolderWatch

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.calls


def test_recomputed_after_each_write_and_only_then(tmp_path):
    (tmp_path / "models").mkdir()
    spec = tmp_path / "models" / "products.yml"
    spec.write_text("grants: []\n")
    watch, compute = FolderWatch([tmp_path], backstop_seconds=3600), Counter()
    assert watch.active
    assert [watch.current(compute) for _ in range(3)] == [1, 1, 1]
    spec.write_text("grants: [marketing]\n")  # in place
    assert watch.current(compute) == 2
    (tmp_path / "models" / "new").mkdir()  # a new folder, then a file in it
    assert watch.current(compute) == 3
    (tmp_path / "models" / "new" / "more.yml").write_text("x: 1\n")
    assert watch.current(compute) == 4
    spec.unlink()
    assert watch.current(compute) == 5
    assert watch.current(compute) == 5


def test_skipped_folders_do_not_count_and_shallow_ones_do(tmp_path):
    for folder in ("logs", "target/compiled"):
        (tmp_path / folder).mkdir(parents=True)
    watch = FolderWatch(
        [tmp_path], shallow=lambda: [tmp_path / "target"], skip=frozenset({"logs", "target"})
    )
    compute = Counter()
    assert watch.current(compute) == 1
    (tmp_path / "logs" / "dbt.log").write_text("noise\n")
    (tmp_path / "target" / "compiled" / "x.sql").write_text("select 1\n")
    assert watch.current(compute) == 1
    (tmp_path / "target" / "manifest.json").write_text("{}\n")
    assert watch.current(compute) == 2


def test_a_failed_computation_is_not_served(tmp_path):
    watch = FolderWatch([tmp_path], backstop_seconds=3600)

    def broken() -> int:
        raise ValueError("a broken descriptor")

    with pytest.raises(ValueError):
        watch.current(broken)
    assert watch.current(Counter()) == 1  # computed now, not a stale or missing value


def test_the_backstop_recomputes_without_events(tmp_path):
    watch, compute = FolderWatch([tmp_path], backstop_seconds=0.05), Counter()
    assert watch.current(compute) == 1
    time.sleep(0.1)
    assert watch.current(compute) == 2


def test_without_the_kernel_every_call_recomputes(tmp_path):
    watch, compute = FolderWatch([tmp_path]), Counter()
    watch.close()  # as when inotify is unavailable or broke
    assert not watch.active
    assert [watch.current(compute) for _ in range(3)] == [1, 2, 3]
