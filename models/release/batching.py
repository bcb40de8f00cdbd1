"""Server-side dynamic batching: prediction requests that arrive close together are answered by
one model call, and each caller gets its own slice of the answer back.

A model call on a small batch costs little more than on one text (the fixed costs, session
overhead and thread wake-ups, dominate on CPUs), so under concurrent load grouping requests raises
throughput. A batch is cut when it holds ``max_items`` inputs or ``window_s`` after its first
request arrived, whichever comes first, or at once when no other request is in the server (a lone
client pays no window); requests that queued while the model was busy go into the next call at
once. With batching off every request is its own call. ``workers`` calls run at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Batcher:
    """Runs ``fn(inputs) -> outputs`` (one output per input, in order) for many callers."""

    def __init__(
        self,
        fn: Callable[[list[Any]], list[Any]],
        *,
        batching: bool,
        window_s: float,
        max_items: int,
        workers: int = 1,
        pending: Callable[[], int] | None = None,
    ) -> None:
        self.fn = fn
        self.pending = pending  # requests in the server (arriving, queued or running), if known
        self.batching = batching
        self.window_s = window_s
        self.max_items = max_items
        self.workers = workers
        self.calls = 0  # model calls made (a request's share of them shows the batching at work)
        self.items = 0
        self._running = 0  # requests whose model call is in progress
        self._queue: asyncio.Queue[tuple[list[Any], asyncio.Future[list[Any]]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._held: deque[tuple[list[Any], asyncio.Future[list[Any]]]] = deque()

    def _ensure_started(self) -> asyncio.Queue[tuple[list[Any], asyncio.Future[list[Any]]]]:
        """Start the worker loops in the running event loop, on first use (no await: atomic there)."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="slimflow-model")
            self._tasks = [asyncio.create_task(self._loop()) for _ in range(self.workers)]
        return self._queue

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._queue, self._pool, self._tasks = None, None, []

    async def submit(self, inputs: list[Any]) -> list[Any]:
        """The outputs for ``inputs``, computed alone or together with other callers' inputs."""
        queue = self._ensure_started()
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        queue.put_nowait((inputs, fut))
        return await fut

    async def _next_batch(self) -> list[tuple[list[Any], asyncio.Future[list[Any]]]]:
        assert self._queue is not None
        batch = [self._held.popleft() if self._held else await self._queue.get()]
        if not self.batching:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        size = len(batch[0][0])
        while size < self.max_items:
            try:
                item = self._queue.get_nowait()  # queued while the model was busy: no waiting
            except asyncio.QueueEmpty:
                if self.pending is not None and self.pending() <= len(batch) + self._running:
                    break  # no other request is on its way: waiting would only add latency
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if size + len(item[0]) > self.max_items:
                self._held.append(item)  # too big to join: it leads the next batch
                break
            batch.append(item)
            size += len(item[0])
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            batch = [(x, f) for x, f in batch if not f.done()]  # callers that went away
            if not batch:
                continue
            flat = [x for inputs, _ in batch for x in inputs]
            self._running += len(batch)
            try:
                out = await loop.run_in_executor(self._pool, self.fn, flat)
            except Exception as e:  # every caller of this call hears of it
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            finally:
                self._running -= len(batch)
            self.calls += 1
            self.items += len(flat)
            start = 0
            for inputs, f in batch:
                if not f.done():
                    f.set_result(out[start : start + len(inputs)])
                start += len(inputs)
