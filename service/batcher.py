"""Micro-batching: requests for one model are gathered into batches run off the event loop.

A bounded asyncio queue per model; a worker takes the first waiting image, waits up
to ``max_wait`` for more (up to ``max_batch``) while more are on their way (requests for
the model still being decoded: ``arriving``), and runs ``Detector.inspect`` on the
whole batch in the shared inference thread; with nothing on its way it runs at once, so a
line posting one image at a time never waits for a batch that cannot fill. Explanation
requests wait in the same queue and run one by one in the same thread. A full queue raises ``QueueFull`` at once, which
the API turns into 503 + Retry-After, whatever the kind of work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from models.inspection import Inspection, Scorer
from service.metrics import Metrics
from service.turns import Turns

if TYPE_CHECKING:  # explanations exist only where PyTorch does; the batcher itself never needs it
    from models.explain import RegionExplanation

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The model's queue is full; the client should retry later."""


class BatcherClosed(Exception):
    """This batcher's model was replaced; submit to the current one."""


class Result(NamedTuple):
    inspection: Inspection
    detector: Scorer
    """The model that produced this result (its version goes into the response)."""
    queue_seconds: float
    inference_seconds: float
    batch_size: int
    explanation: list[RegionExplanation] | None = None
    """Region explanations, for items submitted with explain=True."""


class _Item(NamedTuple):
    image: np.ndarray
    future: asyncio.Future
    enqueued: float
    explain: bool


class MicroBatcher:
    def __init__(self, name: str, detector: Scorer, executor: Executor, metrics: Metrics,
                 max_batch: int, max_wait_s: float, queue_size: int, arriving: Callable[[], int],
                 turns: Turns | None = None):
        self.name, self.detector, self.executor, self.metrics = name, detector, executor, metrics
        self.turns = turns
        """The gate a CPU batch runs alone under (service.turns); None: its batches leave the cores to decoding."""
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.arriving = arriving
        """How many requests for this model are being decoded now (they will queue within milliseconds)."""
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._task: asyncio.Task | None = None
        self._busy = False
        self.closed = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def submit(self, image: np.ndarray, explain: bool = False) -> Result:
        """Queue one image; every kind of inference work shares this bounded queue (QueueFull when full)."""
        if self.closed:
            raise BatcherClosed(self.name)
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Item(image, fut, time.perf_counter(), explain))
        except asyncio.QueueFull:
            raise QueueFull(self.name) from None
        self.metrics.queue_depth.labels(self.name).set(self.queue.qsize())
        return await fut

    async def _next_batch(self) -> list[_Item]:
        batch = [await self.queue.get()]
        self._busy = True  # from here until results are set, drain_and_stop must wait
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            if not self.arriving():  # nothing on its way: waiting would only add latency
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    def _infer(self, batch: list[_Item]) -> list[tuple[Inspection, list[RegionExplanation] | None] | Exception]:
        """Runs in the inference thread: plain items as one batch, explanations one by one. An item that
        fails fails alone: when a batch raises, its items are run one by one to find which."""
        plain = [it for it in batch if not it.explain]
        out: dict[int, tuple[Inspection, list[RegionExplanation] | None] | Exception] = {}
        if plain:
            try:
                out.update(zip(map(id, plain), ((r, None) for r in self.detector.inspect([it.image for it in plain])),
                               strict=True))
            except Exception:  # noqa: BLE001 - isolate the failing item(s) below
                for it in plain:
                    out[id(it)] = self._one(lambda it=it: (self.detector.inspect([it.image])[0], None))
        for it in batch:
            if it.explain:
                out[id(it)] = self._one(lambda it=it: self.detector.explain(it.image))
        return [out[id(it)] for it in batch]

    def _one(self, run):  # noqa: ANN001, ANN202 - a thunk and what it returns, or its exception
        try:
            return run()
        except Exception as e:  # noqa: BLE001 - reported to that item's request alone
            if not isinstance(e, ValueError):
                log.exception("inference failed for one image of model %s", self.name)
            return e

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self.metrics.queue_depth.labels(self.name).set(self.queue.qsize())
            started = time.perf_counter()
            try:
                run = (self._infer,) if self.turns is None else (self.turns.batch, self._infer)
                results = await loop.run_in_executor(self.executor, *run, batch)
            except Exception as e:  # noqa: BLE001 - one bad batch must not kill the worker
                log.exception("inference failed for model %s", self.name)
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                self._busy = False
                continue
            elapsed = time.perf_counter() - started
            self.metrics.batch_size.observe(len(batch))
            for it, outcome in zip(batch, results, strict=True):
                if it.future.done():  # the client may have gone away
                    continue
                if isinstance(outcome, Exception):
                    it.future.set_exception(outcome)
                else:
                    it.future.set_result(Result(outcome[0], self.detector, started - it.enqueued, elapsed,
                                                len(batch), outcome[1]))
            self._busy = False

    async def drain_and_stop(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued and running (in-flight requests complete on this model), then stop."""
        self.closed = True  # new requests go to the replacement; queued ones still run here
        deadline = time.perf_counter() + timeout_s
        while (self._busy or not self.queue.empty()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while not self.queue.empty():  # only after a timeout: fail what could not run
            it = self.queue.get_nowait()
            if not it.future.done():
                it.future.set_exception(QueueFull(self.name))
