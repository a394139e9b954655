"""Whether files under some folders changed since last asked, as the kernel reports it.

A long-running reader (the query service) asks before every query whether the mesh's
descriptor files changed, so that an edited grant applies to the next query. Walking and
stat-ing every project file for that costs more than a small query itself; Linux's inotify
answers the same question with one non-blocking read: the kernel queues an event when a file
is written, so a query that starts after the write sees it (``inotify-simple``, a thin ctypes
wrapper of the system calls).

Where inotify cannot answer (not Linux, the instance or watch limit reached, a network file
system whose other writers the kernel does not see), the caller is told "changed" every
time, or at least every ``backstop_seconds``: a watch never makes a reader staler than that.
Ground layer: the standard library and inotify-simple only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

try:  # Linux only (a platform marker in pyproject.toml)
    from inotify_simple import INotify
    from inotify_simple import flags as _flags
except ImportError:  # pragma: no cover - other systems check the files every time
    INotify = None

log = logging.getLogger(__name__)
T = TypeVar("T")

_MASK = (
    (
        _flags.MODIFY | _flags.ATTRIB | _flags.CLOSE_WRITE | _flags.MOVED_FROM
        | _flags.MOVED_TO | _flags.CREATE | _flags.DELETE | _flags.DELETE_SELF
        | _flags.MOVE_SELF
    )
    if INotify is not None
    else 0
)  # fmt: skip


class FolderWatch(Generic[T]):
    """A value computed from the files under ``folders`` (recursively, but not into folders
    named in ``skip``) and in the ``shallow()`` folders (their own entries only; asked again at
    each computation, as folders come and go), recomputed when
    they change. Thread-safe: a caller that asks after a write waits for the value computed
    after it, never gets the one before.

    It is recomputed on the first call, after any change since it was last computed, every
    time when the watch cannot be kept, and at least every ``backstop_seconds``. New
    subfolders are watched from the computation that follows their creation."""

    def __init__(
        self,
        folders: Iterable[Path],
        *,
        shallow: Callable[[], Iterable[Path]] = tuple,
        skip: frozenset[str] = frozenset(),
        backstop_seconds: float = 2.0,
    ) -> None:
        self._folders = list(folders)
        self._shallow = shallow
        self._skip = skip
        self._backstop = backstop_seconds
        self._lock = threading.Lock()
        self._inotify = None
        self._checked = float("-inf")  # when the value was last computed
        self._value: tuple[T] | None = None
        if INotify is not None:
            try:
                self._inotify = INotify(nonblocking=True)
            except OSError as exc:  # max_user_instances reached
                log.warning("watching files is not possible (%s): checking every time", exc)

    @property
    def active(self) -> bool:
        """Whether the kernel reports changes (else ``changed()`` is always True)."""
        return self._inotify is not None

    def current(self, compute: Callable[[], T]) -> T:
        """The value, from ``compute()`` if the files changed since it was computed."""
        with self._lock:
            if self._changed() or self._value is None:
                self._value = None  # a failed computation is not cached
                self._value = (compute(),)
            return self._value[0]

    def _changed(self) -> bool:
        if self._inotify is None:
            return True
        try:
            events = self._inotify.read(timeout=0)
        except OSError:  # the instance broke: stop trusting it
            self.close()
            return True
        if not events and time.monotonic() - self._checked < self._backstop:
            return False
        self._checked = time.monotonic()
        self._watch_all()  # before the files are read: a write from now on is an event
        return True

    def _watch_all(self) -> None:
        """Watch every folder (again: a new one, or one replaced, gets its watch)."""
        try:
            for root in self._folders:
                for folder, dirs, _ in os.walk(root):
                    dirs[:] = [d for d in dirs if d not in self._skip]
                    self._add(folder)
            for folder in self._shallow():
                self._add(folder)
        except OSError as exc:  # max_user_watches reached: fall back to checking every time
            log.warning("watching files is not possible (%s): checking every time", exc)
            self.close()

    def _add(self, folder: str | Path) -> None:
        if self._inotify is None:
            return
        with contextlib.suppress(FileNotFoundError):  # gone since the walk: nothing to watch
            self._inotify.add_watch(folder, _MASK)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
