"""Per-key concurrency with a bounded queue: a busy client waits, an overloading one gets 429.

Each API key may have `max_concurrent` units of work running at once, where a request
costs what it asks of the engine: `n` choices (or `best_of` candidates) are that many
sequences, so a request of n=8 takes 8 units, not one. Up to `max_queued` more requests
wait their turn, first come first served (a big request at the head is not overtaken by
small ones behind it, so it cannot starve); beyond that a request is refused at once with
429 and `Retry-After`, so one client cannot starve the others or pile up unbounded work
in the gateway.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from serve.errors import APIError


@dataclass
class _Key:
    used: int = 0  # units held by this key's running requests
    waiters: deque[tuple[int, asyncio.Future[None]]] = field(default_factory=deque)


@dataclass
class KeyLimits:
    max_concurrent: int
    max_queued: int
    running: int = 0  # requests holding their units, all keys
    _keys: dict[str, _Key] = field(default_factory=dict)

    @property
    def queued(self) -> int:
        return sum(len(k.waiters) for k in self._keys.values())

    @asynccontextmanager
    async def slot(self, key: str, cost: int = 1) -> AsyncIterator[None]:
        """Hold `cost` of the key's units for the length of the block (429 if it cannot wait)."""
        cost = max(1, min(cost, self.max_concurrent))  # config keeps max_n within the limit
        state = self._keys.setdefault(key, _Key())
        if state.waiters or state.used + cost > self.max_concurrent:
            if len(state.waiters) >= self.max_queued:
                raise APIError(
                    429,
                    f"too many concurrent requests for this key ({self.max_concurrent} running, "
                    f"{self.max_queued} queued; a request of n choices counts n); retry shortly",
                    "rate_limit_exceeded",
                    headers={"Retry-After": "1"},
                )
            await self._wait(state, cost)
        else:
            state.used += cost
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            state.used -= cost
            self._wake(state)

    async def _wait(self, state: _Key, cost: int) -> None:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cost, turn)
        state.waiters.append(entry)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted just as the caller gave up: hand it on
                state.used -= cost
            else:
                state.waiters.remove(entry)
            self._wake(state)
            raise

    def _wake(self, state: _Key) -> None:
        """Grant waiting requests in order while the head one fits."""
        while state.waiters and state.used + state.waiters[0][0] <= self.max_concurrent:
            cost, turn = state.waiters.popleft()
            state.used += cost
            turn.set_result(None)
