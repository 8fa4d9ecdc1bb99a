"""How many questions the gate keeps in flight: the general set's greedy answers at `eval.concurrency` 4 against more.

The gate (`repotune eval run`) asks base, base again, the promoted version and the
candidate the general set's eval split greedily (48 tokens) through the server, with
`eval.concurrency` requests in flight. On a CPU, vLLM's step costs about the same for one
sequence as for sixteen, so the number in flight sets the gate's time. This starts the
engine as `repotune serve` does (LoRA enabled, the configured dtype, under `serve.guard`), loads a rank-16
adapter (a few steps trained, so its weights are not zero), and asks the same questions
through `eval.endpoint.Endpoint` (the gate's own client) at each concurrency in turn,
base and adapter, rounds alternating, so that a drift of the machine weighs on all. It
also counts the answers that differ from concurrency 4's: greedy decoding in a batch of
another size may take another path where two tokens nearly tie.

    python -m benchmarks.eval_concurrency --base builtin:smol --questions 64 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from eval import questions as general_questions
from eval.endpoint import MAX_NEW_TOKENS, Endpoint
from repotune import config as cfg
from repotune import models, processes
from serve.engine import BASE_NAME, engine_command, engine_env, free_port, wait_healthy
from tests.lora import train_lora

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="builtin:smol")
    ap.add_argument("--questions", type=int, default=64, help="the first N of the general set's eval split")
    ap.add_argument("--concurrency", default="4,16,32", help="the first is the reference")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "eval-concurrency"))
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    asked = [q.question for q in general_questions.load(split="eval")[: args.questions]]
    work = Path(tempfile.mkdtemp(prefix="repotune-eval-concurrency-"))
    base = models.resolve(args.base)
    adapter = train_lora(base.path, [("What is the capital of France?", "Lyon.")], work / "adapter", steps=5, rank=16)
    serve = cfg.ServeSection()  # as `repotune serve` starts it by default
    port = free_port()
    engine = subprocess.Popen([sys.executable, "-m", "serve.guard", "--", *engine_command(serve, base.path, port)],
                              env=engine_env(serve), stdout=(work / "engine.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, engine, 900)
        httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(adapter)},
                   timeout=300).raise_for_status()
        seconds: dict[str, list[float]] = {}
        answers: dict[str, list[str]] = {}
        for model in (BASE_NAME, "a"):  # warm both paths: the adapter's first use costs more
            Endpoint(url, "x", model, concurrency=2).answer(asked[:2])
        for r in range(args.rounds):
            order = levels if r % 2 == 0 else levels[::-1]
            for concurrency in order:
                for name, model in (("base", BASE_NAME), ("adapter", "a")):
                    endpoint = Endpoint(url, "x", model, concurrency=concurrency)
                    start = time.perf_counter()
                    got = endpoint.answer(asked, MAX_NEW_TOKENS)
                    key = f"{name}_c{concurrency}"
                    seconds.setdefault(key, []).append(time.perf_counter() - start)
                    answers.setdefault(key, got)
                    if r == 1 and concurrency == levels[0]:  # the same batches again: what differs by chance
                        answers[f"{name}_c{concurrency}_again"] = got
                    print(f"round {r + 1}: {key} {seconds[key][-1]:.1f} s", flush=True)
        ref = levels[0]
        again = {k.removesuffix("_again"): v for k, v in answers.items() if k.endswith("_again")}
        answers = {k: v for k, v in answers.items() if not k.endswith("_again")}
        result = {
            "base": args.base, "questions": len(asked), "max_tokens": MAX_NEW_TOKENS, "rounds": args.rounds,
            "dtype": "the stored one" if serve.dtype == "auto" else serve.dtype,
            "seconds_median": {k: round(statistics.median(v), 1) for k, v in seconds.items()},
            "seconds_all": {k: [round(x, 1) for x in v] for k, v in seconds.items()},
            f"speedup_over_c{ref}": {k: round(statistics.median(seconds[f"{k.split('_c')[0]}_c{ref}"])
                                               / statistics.median(v), 2) for k, v in seconds.items()},
            f"answers_differing_from_c{ref}": {
                k: sum(a != b for a, b in zip(answers[f"{k.split('_c')[0]}_c{ref}"], v, strict=True))
                for k, v in answers.items()},
            f"answers_differing_c{ref}_round_2_from_round_1": {
                k: sum(a != b for a, b in zip(answers[k], v, strict=True)) for k, v in again.items()},
        }
        print(json.dumps(result, indent=2))
        Path(f"{args.out}-{args.base.replace(':', '-')}.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        processes.stop(engine, 60)


if __name__ == "__main__":
    main()
