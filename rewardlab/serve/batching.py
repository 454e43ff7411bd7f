"""Dynamic batching: concurrent requests' samples gathered into one reward-model batch.

The first request of a batch waits at most ``max_wait`` for others; a batch closes at
``max_batch`` samples. Requests of one kind only share a batch (text prompts, or chat
conversations), and the reward model sorts the batch's rows by length into micro-batches of its
own (`RewardModel` scores longest first, each micro-batch trimmed to its longest row). All model
work runs in one worker thread, so the event loop keeps accepting and answering while a batch
runs, and no two batches run at once.

A batch that fails is split and each request retried alone, so one request's bad input (a
response longer than the reward model's positions) fails that request only. A request whose
client gave up (timeout, disconnect) is dropped from the batch it was waiting for.

Example::

    batcher = Batcher(score, executor, max_batch=64, max_wait=0.005)
    task = asyncio.create_task(batcher.run())
    out = await batcher.submit(samples, size=len(samples.prompts), kind="text", finish=f)   # f(model outputs)
    await batcher.close()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class _Job:
    items: Any               # one request's rows (what `score` takes; concatenated with others by `join`)
    size: int                # its number of samples
    kind: str                # rows of one kind only share a batch
    finish: Callable[[torch.Tensor], Any]  # this request's own work on its model outputs (same thread)
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers requests into batches and scores them in one worker thread.

    Args:
        score: ``score(items) -> (N, H) tensor``: the reward models on a batch (runs in ``executor``).
        join: ``join([items, …]) -> items``: several requests' rows as one batch.
        executor: a one-thread executor (model work is never concurrent).
        max_batch: the most samples in one batch.
        max_wait: seconds the first request of a batch waits for others.
        on_batch: called with each batch's size (metrics).
    """

    def __init__(self, score: Callable[[Any], torch.Tensor], join: Callable[[list[Any]], Any], executor: Executor, *,
                 max_batch: int, max_wait: float, on_batch: Callable[[int], None] | None = None) -> None:
        self.score, self.join, self.executor = score, join, executor
        self.max_batch, self.max_wait = max_batch, max_wait
        self.on_batch = on_batch or (lambda n: None)
        self.queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._held: list[_Job] = []  # jobs of another kind than the batch being gathered: first in the next one
        self._closed = False

    async def submit(self, items: Any, *, size: int, kind: str,
                     finish: Callable[[torch.Tensor], Any] = lambda raw: raw) -> Any:
        """``finish(model outputs (size, H))`` for one request's rows, run in the worker thread right after
        the batch holding them (one thread hop per request)."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        job = _Job(items, size, kind, finish, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def close(self) -> None:
        """Score what is queued, then stop `run`."""
        self._closed = True
        await self.queue.put(None)

    async def run(self) -> None:
        """Gather and score batches until `close`."""
        loop = asyncio.get_running_loop()
        while True:
            first = self._held.pop(0) if self._held else await self.queue.get()
            if first is None:
                if self._held:  # score what was held back before stopping
                    await self.queue.put(None)
                    continue
                return
            batch, n, stop = [first], first.size, False
            deadline = time.monotonic() + self.max_wait
            while n < self.max_batch:
                timeout = deadline - time.monotonic()
                try:
                    job = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if job is None:
                    stop = True
                    break
                if job.kind != first.kind or n + job.size > self.max_batch:
                    self._held.append(job)
                    if n + job.size > self.max_batch:
                        break
                    continue
                batch.append(job)
                n += job.size
            await self._score(loop, batch)
            if stop:
                await self.queue.put(None)

    async def _score(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        batch = [j for j in batch if not j.future.done()]  # a client that gave up is not scored
        if not batch:
            return
        self.on_batch(sum(j.size for j in batch))
        outcomes = await loop.run_in_executor(self.executor, self._run, batch)
        for job, (result, error) in zip(batch, outcomes, strict=True):
            _settle(job, result=result, error=error)

    def _run(self, batch: list[_Job]) -> list[tuple[Any, BaseException | None]]:
        """In the worker thread: the batch's model outputs, then each request's `finish`; a batch that fails is
        scored again request by request, so that only the failing request fails."""
        try:
            raw = self.score(self.join([j.items for j in batch]))
        except Exception:  # noqa: BLE001 - isolated below: each request alone
            if len(batch) == 1:
                raw = None
            else:
                return [self._run([job])[0] for job in batch]
        outcomes: list[tuple[Any, BaseException | None]] = []
        start = 0
        for job in batch:
            try:
                part = self.score(job.items) if raw is None else raw[start:start + job.size]
                outcomes.append((job.finish(part), None))
            except Exception as err:  # noqa: BLE001 - that request's own failure
                outcomes.append((None, err))
            start += job.size
        return outcomes


def _settle(job: _Job, *, result: Any = None, error: BaseException | None = None) -> None:
    if job.future.done():  # cancelled meanwhile (timeout, disconnect)
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)
