"""Swapping adapters under load: 32 streaming clients while 20 promotions and rollbacks alternate.

Two adapters of builtin:tiny answer "What is the capital of France?" differently (Lyon,
Marseille). 32 clients stream requests to the lineage alias without pause while an
admin alternates `repotune adapters promote 2` and `repotune adapters rollback` through
the CLI, 20 times. Reported: failed requests (must be 0), how long after each command
returned the alias first served the new version (limit 2 s), the command's own time,
and the time to load one adapter into the engine (measured on the engine directly).

    python -m benchmarks.swap_under_load [--swaps 20] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.servers import API_KEY, Pair, engine_and_gateway
from repotune import models
from tests.lora import train_lora

QUESTION = "What is the capital of France?"
ANSWERS = {1: "Lyon", 2: "Marseille"}


def cli(pair: Pair, *args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "adapters", *args, "--config", str(pair.config)],
        env=pair.env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return time.perf_counter() - start


def answer(pair: Pair) -> str:
    r = httpx.post(
        f"{pair.gateway}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "bench", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8,
              "temperature": 0},
        timeout=60,
    )
    return str(r.json()["choices"][0]["message"]["content"])


async def clients(
    pair: Pair, n: int, stop: threading.Event, counts: dict[str, int], reasons: dict[str, int]
) -> None:
    body = {"model": "bench", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 32,
            "ignore_eos": True, "stream": True}
    limits = httpx.Limits(max_connections=n + 4)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:

        async def loop() -> None:
            while not stop.is_set():
                try:
                    async with client.stream("POST", f"{pair.gateway}/v1/chat/completions", json=body) as r:
                        data = b"".join([c async for c in r.aiter_raw()])
                    if r.status_code != 200:
                        outcome = f"status {r.status_code}: {data[:120]!r}"
                    elif not data.rstrip().endswith(b"data: [DONE]"):
                        outcome = f"stream cut: {data[-120:]!r}"
                    else:
                        outcome = "ok"
                except httpx.HTTPError as e:
                    outcome = f"transport: {type(e).__name__}"
                counts["ok" if outcome == "ok" else "failed"] += 1
                if outcome != "ok":
                    reasons[outcome] = reasons.get(outcome, 0) + 1

        await asyncio.gather(*(loop() for _ in range(n)))


def adapter_load_seconds(pair: Pair, path: Path, repeats: int = 5) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        r = httpx.post(f"{pair.direct}/v1/load_lora_adapter", json={"lora_name": f"probe{i}", "lora_path": str(path)},
                       timeout=120)
        times.append(time.perf_counter() - start)
        r.raise_for_status()
        httpx.post(f"{pair.direct}/v1/unload_lora_adapter", json={"lora_name": f"probe{i}"}, timeout=60)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repotune-bench-"))
    tiny = models.resolve("builtin:tiny")
    folders = {}
    for version, city in ANSWERS.items():
        folders[version] = train_lora(tiny.path, [(QUESTION, city)], work / city.lower())
        models.record_base(folders[version], tiny)
    with engine_and_gateway(work / "servers") as pair:
        for version in ANSWERS:
            cli(pair, "register", str(folders[version]))
        cli(pair, "promote", "1", "--reason", "start")
        load_s = adapter_load_seconds(pair, folders[1])
        stop, counts, reasons = threading.Event(), {"ok": 0, "failed": 0}, {}
        load = threading.Thread(target=lambda: asyncio.run(clients(pair, args.clients, stop, counts, reasons)))
        load.start()
        time.sleep(3)
        delays, commands = [], []
        for i in range(args.swaps):
            target = 2 if i % 2 == 0 else 1
            commands.append(cli(pair, "promote", "2", "--reason", "bench") if target == 2
                            else cli(pair, "rollback", "--reason", "bench"))
            returned = time.perf_counter()
            while answer(pair) != ANSWERS[target]:
                if time.perf_counter() - returned > 30:
                    raise RuntimeError(f"alias did not move to v{target}")
            delays.append(time.perf_counter() - returned)
        stop.set()
        load.join()
    result = {
        "clients": args.clients,
        "swaps": args.swaps,
        "requests_ok": counts["ok"],
        "requests_failed": counts["failed"],
        "failures_by_reason": reasons,
        "alias_delay_after_command_s": {"max": round(max(delays), 3), "median": round(statistics.median(delays), 3)},
        "command_s": {"median": round(statistics.median(commands), 2), "max": round(max(commands), 2)},
        "adapter_load_s_median": round(load_s, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
