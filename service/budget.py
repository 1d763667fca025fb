"""A bound on the pixels being decoded at once, across every request and batch.

An upload's size says little about its memory: a 100 KB PNG can hold 36 million
pixels. Each image's pixel count is read from its header first; decoding waits until
that many pixels fit under the budget, and an image that cannot get them in time is
answered 503 + Retry-After. Peak decode memory is then bounded by the budget, not by
the number or size of concurrent requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class BudgetBusy(Exception):
    """The budget stayed full for longer than the caller would wait."""


class PixelBudget:
    def __init__(self, capacity: int, on_change: Callable[[int], None] = lambda used: None):
        self.capacity = capacity
        self.used = 0
        self._on_change = on_change
        """Told the pixels in use after every change (the service's gauge)."""
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int, wait_s: float) -> AsyncIterator[None]:
        """Reserve `pixels` (at most the capacity) for the body of the `async with`."""
        pixels = min(pixels, self.capacity)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.used + pixels <= self.capacity), wait_s)
            except TimeoutError:
                raise BudgetBusy(f"{self.used} of {self.capacity} decode pixels in use") from None
            self.used += pixels
            self._on_change(self.used)
        try:
            yield
        finally:
            async with self._changed:
                self.used -= pixels
                self._on_change(self.used)
                self._changed.notify_all()
