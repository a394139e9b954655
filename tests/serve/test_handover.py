"""How a query thread hands a result's batches to its connection: each batch exactly once, even
when the event loop is too busy to report a put in time (a loaded machine: the CI run that found
it sent one batch twice, and the client read a column list as rows).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from mesh_platform.serve.engines import ClientGoneError, hand_over


class SlowQueue(asyncio.Queue):
    """A queue whose put lands at once, then holds the loop past the hand-over's 0.5 s wait
    before it reports back: what a busy loop does to a put that already happened."""

    async def put(self, item: Any) -> None:
        await super().put(item)
        time.sleep(0.8)  # blocks the loop on purpose: the put is done, its report is late


def run_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread


def stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_a_late_reported_put_is_not_put_twice():
    loop, thread = run_loop()
    try:
        queue = asyncio.run_coroutine_threadsafe(_make(SlowQueue), loop).result()
        for item in ("columns", "batch 1", "batch 2"):
            hand_over(loop, queue, item, threading.Event())
        assert [queue.get_nowait() for _ in range(queue.qsize())] == [
            "columns", "batch 1", "batch 2",
        ]  # fmt: skip
    finally:
        stop_loop(loop, thread)


def test_a_client_gone_while_its_queue_is_full_stops_the_query():
    loop, thread = run_loop()
    try:
        queue = asyncio.run_coroutine_threadsafe(_make(asyncio.Queue, 1), loop).result()
        gone = threading.Event()
        hand_over(loop, queue, "batch 1", gone)  # fills it: nobody reads
        threading.Timer(0.3, gone.set).start()
        started = time.monotonic()
        with pytest.raises(ClientGoneError, match="disconnected mid-result"):
            hand_over(loop, queue, "batch 2", gone)
        assert time.monotonic() - started < 5
        assert queue.qsize() == 1
    finally:
        stop_loop(loop, thread)


async def _make(kind: type[asyncio.Queue], size: int = 0) -> asyncio.Queue:
    return kind(size)
