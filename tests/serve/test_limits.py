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
