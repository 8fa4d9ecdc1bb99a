"""Per-key concurrency with a bounded queue: a busy client waits, an overloading one gets 429.

Each API key may run `max_concurrent` requests at once; up to `max_queued` more wait
their turn, and beyond that a request is refused at once with 429 and `Retry-After`,
so one client cannot starve the others or pile up unbounded work in the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from serve.errors import APIError


@dataclass
class _Slot:
    semaphore: asyncio.Semaphore
    waiting: int = 0


@dataclass
class KeyLimits:
    max_concurrent: int
    max_queued: int
    running: int = 0  # requests holding a slot, all keys
    _slots: dict[str, _Slot] = field(default_factory=dict)

    @property
    def queued(self) -> int:
        return sum(slot.waiting for slot in self._slots.values())

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(asyncio.Semaphore(self.max_concurrent))
        if slot.semaphore.locked() and slot.waiting >= self.max_queued:
            raise APIError(
                429,
                f"too many concurrent requests for this key ({self.max_concurrent} running, "
                f"{self.max_queued} queued); retry shortly",
                "rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        slot.waiting += 1
        try:
            await slot.semaphore.acquire()
        finally:
            slot.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            slot.semaphore.release()
