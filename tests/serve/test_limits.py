"""Per-key limits: a key runs N at once, queues M more, and is refused beyond that."""

import asyncio

import pytest

from serve.errors import APIError
from serve.limits import KeyLimits


def test_a_key_beyond_its_queue_gets_429_and_other_keys_are_unaffected():
    async def scenario() -> list[object]:
        limits = KeyLimits(max_concurrent=2, max_queued=1)
        release = asyncio.Event()
        running = 0

        async def request(key: str) -> str:
            nonlocal running
            async with limits.slot(key):
                running += 1
                await release.wait()
            return "ok"

        tasks = [asyncio.create_task(request("a")) for _ in range(3)]  # 2 run, 1 waits
        await asyncio.sleep(0.05)
        assert running == 2
        with pytest.raises(APIError) as refused:
            async with limits.slot("a"):
                pass
        assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
        other = asyncio.create_task(request("b"))  # another key has its own slots
        await asyncio.sleep(0.05)
        assert running == 3
        release.set()
        return await asyncio.gather(*tasks, other)

    assert asyncio.run(scenario()) == ["ok"] * 4


def test_a_request_costs_its_n_and_waits_its_turn_in_order():
    async def scenario() -> list[str]:
        limits = KeyLimits(max_concurrent=8, max_queued=2)
        order: list[str] = []
        release = {name: asyncio.Event() for name in ("big", "small", "eight", "one")}

        async def request(name: str, cost: int) -> None:
            async with limits.slot("a", cost):
                order.append(name)
                await release[name].wait()

        big = asyncio.create_task(request("big", 6))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(request("small", 2))  # 6 + 2 = 8: runs beside it
        await asyncio.sleep(0.01)
        assert order == ["big", "small"] and limits.running == 2
        eight = asyncio.create_task(request("eight", 8))  # waits for all 8 units
        await asyncio.sleep(0.01)
        one = asyncio.create_task(request("one", 1))  # queued behind it, not ahead: no starvation
        await asyncio.sleep(0.01)
        assert limits.queued == 2
        with pytest.raises(APIError):  # the queue (2) is full
            async with limits.slot("a", 1):
                pass
        release["small"].set()
        await asyncio.sleep(0.01)
        assert order == ["big", "small"]  # 2 units free, but "eight" is first in line
        release["big"].set()
        await asyncio.sleep(0.01)
        assert order == ["big", "small", "eight"]
        release["eight"].set()
        release["one"].set()
        await asyncio.gather(big, small, eight, one)
        return order

    assert asyncio.run(scenario()) == ["big", "small", "eight", "one"]


def test_a_waiter_that_gives_up_leaves_the_queue():
    async def scenario() -> None:
        limits = KeyLimits(max_concurrent=1, max_queued=1)
        release = asyncio.Event()

        async def hold() -> None:
            async with limits.slot("a"):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.sleep(0.01)
        assert limits.queued == 0
        release.set()
        await holder
        async with limits.slot("a"):  # nothing leaked: the unit is free
            assert limits.running == 1

    asyncio.run(scenario())
