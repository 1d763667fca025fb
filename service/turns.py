"""CPU inference and upload decoding take turns on the cores instead of running at once.

A CPU micro-batch spreads over every core (intra-op threads that meet at a barrier after each layer). An upload
decoded meanwhile takes one of those cores, and every thread of the batch can wait at each barrier for the one that
shares its core. Here a CPU batch runs alone: decodes (any number at once) wait while one runs, and a batch waits
for the decodes already running, never for new ones (so a stream of uploads cannot starve inference). Measured on
2 cores (bench/results/cost.md, column "decoding during inference"): 1-3 % more images/s through HTTP at
concurrency 8 on the 640 px model, a small gain. Models on a GPU do not take a turn: their inference leaves the
cores to decoding.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Turns:
    """A readers-writer gate between threads: decodes share it, a CPU batch holds it alone. Disabled, both
    run at once, as without it."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._cond = threading.Condition()
        self._decoding = 0
        self._batch_running = False
        self._batches_waiting = 0

    def decode(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` (a decode) when no CPU batch runs or waits."""
        if not self.enabled:
            return fn(*args)
        with self._cond:
            self._cond.wait_for(lambda: not self._batch_running and not self._batches_waiting)
            self._decoding += 1
        try:
            return fn(*args)
        finally:
            with self._cond:
                self._decoding -= 1
                if not self._decoding:
                    self._cond.notify_all()

    def batch(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` (a CPU micro-batch) alone: after the decodes already running, before any new one."""
        if not self.enabled:
            return fn(*args)
        with self._cond:
            self._batches_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._batch_running and not self._decoding)
            finally:
                self._batches_waiting -= 1
            self._batch_running = True
        try:
            return fn(*args)
        finally:
            with self._cond:
                self._batch_running = False
                self._cond.notify_all()
