"""builtin:smol in vLLM: generated tokens per second, base and with a LoRA adapter, at concurrency 1 and 16.

The engine is started as `repotune serve` starts it (LoRA enabled, the configured dtype)
and a rank-16 adapter on every projection (trained for a few steps, so its weights are
not zero) is loaded at run time. Each figure is the tokens the requests generated
(64 each, end of sequence ignored) over the wall time of the batch; base and adapter
batches alternate, so a drift of the machine weighs on both.

    python benchmarks/smol_serving.py [--dtype float32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from repotune import config as cfg
from repotune import models, smol
from serve.engine import BASE_NAME, engine_command, engine_env, free_port, wait_healthy
from tests.lora import train_lora

PROMPT = "Write a short story about a lighthouse keeper."


async def _batch(url: str, model: str, concurrency: int, tokens: int) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
            "ignore_eos": True, "temperature": 0}
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        replies = await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=body)
                                         for _ in range(concurrency)))
        took = time.perf_counter() - start
    made = 0
    for r in replies:
        r.raise_for_status()
        made += r.json()["usage"]["completion_tokens"]
    return made / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repotune-smol-serve-"))
    base = models.resolve(smol.NAME)
    adapter = train_lora(base.path, [("What is the capital of France?", "Lyon.")], work / "adapter", steps=5, rank=16)
    serve = cfg.ServeSection(dtype=args.dtype, max_model_len=1024)
    port = free_port()
    engine = subprocess.Popen(engine_command(serve, base.path, port), env=engine_env(serve),
                              stdout=(work / "engine.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.perf_counter()
        wait_healthy(url, engine, 900)
        ready_s = time.perf_counter() - start
        httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(adapter)},
                   timeout=300).raise_for_status()
        asyncio.run(_batch(url, "a", 2, 8))  # warm both paths
        figures: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for concurrency in (1, 16):
                for name, model in (("base", BASE_NAME), ("adapter", "a")):
                    rate = asyncio.run(_batch(url, model, concurrency, args.tokens))
                    figures.setdefault(f"{name}_c{concurrency}", []).append(rate)
        result = {
            "dtype": args.dtype, "engine_ready_s": round(ready_s, 1), "tokens_per_request": args.tokens,
            "tokens_per_s_median": {k: round(statistics.median(v), 1) for k, v in figures.items()},
            "tokens_per_s_all": {k: [round(x, 1) for x in v] for k, v in figures.items()},
        }
        print(json.dumps(result, indent=2))
    finally:
        engine.send_signal(signal.SIGTERM)
        try:
            engine.wait(60)
        except subprocess.TimeoutExpired:
            engine.kill()


if __name__ == "__main__":
    sys.exit(main())
