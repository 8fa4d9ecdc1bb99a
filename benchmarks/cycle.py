"""The continual loop on a generated repository: one full cycle with the server up, a cycle with
nothing new, clients' latency while a cycle trains against idle, peak memory, and freshness.

A history of `--commits` commits (with `--prs` merged pull requests) is generated with
`git fast-import` (the ingest benchmark's generator). `repotune serve` runs on it, and:

1. idle: `--requests` chat requests to `base`, one after the other: p50 and p99;
2. the first cycle, `repotune tune --now --json` as a user runs it, with no client
   asking: each step's time; the memory of every process of the server and the cycle is
   sampled throughout (the peak of their summed RSS: what `repotune up` needs during a
   cycle);
3. a cycle with nothing new, through the CLI (the whole process, and the cycle's own time);
3b. latency under training: `repotune train` for `--load-minutes` (its budget) beside the
   server, with the same requests one after another while its process runs. Training runs at
   `train.niceness` 10, so the server keeps the cores it needs; the tokens the training
   got through in that time are reported beside it (what the clients' share cost it);
4. freshness: `repotune tuner` runs; a new commit is made, a signed push event is posted
   to the server's webhook, and the time is taken until the alias serves the new version
   (and whether it answers the new commit's question with its subject).

    python -m benchmarks.cycle [--base builtin:tiny] [--commits 500] [--prs 50] [--budget-minutes 4] [--eval-max 500]
                               [--set train.epochs=6 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
KEY, SECRET = "bench-key", "bench-webhook-secret"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="builtin:tiny")
    ap.add_argument("--commits", type=int, default=500)
    ap.add_argument("--prs", type=int, default=50)
    ap.add_argument("--budget-minutes", type=float, default=4.0, help="train.budget_minutes")
    ap.add_argument("--requests", type=int, default=40, help="idle requests for the latency reference")
    ap.add_argument("--load-minutes", type=float, default=1.0, help="how long the training under client load runs")
    ap.add_argument("--eval-max", type=int, default=500, help="tuner.data.eval_max: held-out domain questions "
                    "the gate asks each model")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="another setting of the cycle's config, e.g. train.epochs=6 or tuner.data.replay_answers=both "
                         "(the value as JSON, else a string); repeatable")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "cycle"))
    a = ap.parse_args()

    from benchmarks.ingest_history import generate
    from serve.engine import free_port, wait_healthy

    folder = Path(tempfile.mkdtemp(prefix="cycle-"))
    repo, _ = generate(folder, a.commits, a.prs, 0)
    port = free_port()
    config = folder / "config.toml"
    settings: dict[str, Any] = {
        "model": {"base": a.base}, "ingest": {"repo": str(repo)}, "paths": {"data_dir": str(folder / "state")},
        "serve": {"port": port}, "tuner": {"lineage": "bench", "data": {"eval_max": a.eval_max}},
        "train": {"budget_minutes": a.budget_minutes}, "schedule": {"debounce_s": 0.0, "poll_s": 1.0}}
    config.write_text(tomli_w.dumps(overridden(settings, a.set)))
    env = {**os.environ, "REPOTUNE_API_KEYS": KEY, "REPOTUNE_ADMIN_KEY": KEY, "REPOTUNE_WEBHOOK_SECRET": SECRET}
    env.pop("REPOTUNE_CONFIG", None)
    cli = [sys.executable, "-m", "repotune.cli"]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*cli, "serve", "--config", str(config)], env=env, start_new_session=True,
                              stdout=(folder / "serve.log").open("wb"), stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"base": a.base, "commits": a.commits, "prs": a.prs, "budget_minutes": a.budget_minutes,
                              "eval_max": a.eval_max, "settings": a.set}
    try:
        started = time.monotonic()
        wait_healthy(url, server, 900)
        result["serve_start_s"] = round(time.monotonic() - started, 1)
        result["idle"] = _latencies([_ask(url) for _ in range(a.requests)])
        print(f"idle: {result['idle']}", flush=True)

        first, peak = _first_cycle(cli, config, env, server.pid)
        result["first_cycle"] = first
        result["peak_rss_mb"] = peak
        print(f"first cycle: {first['status']} in {first['wall_s']} s; steps "
              f"{[(s['name'], s['seconds']) for s in first['steps']]}; peak {peak} MB", flush=True)

        t0 = time.monotonic()
        again = json.loads(subprocess.run([*cli, "tune", "--now", "--json", "--config", str(config)], env=env,
                                          capture_output=True, text=True, check=True).stdout)
        result["nothing_new"] = {"status": again["status"], "wall_s": round(time.monotonic() - t0, 2),
                                 "cycle_s": round(sum(s["seconds"] for s in again["steps"]), 2)}
        print(f"nothing new: {result['nothing_new']}", flush=True)

        result["during_training"], result["loaded_training"] = _training_under_load(cli, folder, env, url, a)
        print(f"latency while training: {result['during_training']}; training: {result['loaded_training']}",
              flush=True)

        result["freshness"] = _freshness(cli, config, env, url, repo)
        print(f"freshness: {result['freshness']}", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(90)
    out = Path(f"{a.out}-{a.base.replace(':', '-')}-{a.commits}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


def overridden(settings: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """`settings` with each `SECTION.KEY=VALUE` of `items` set (the value as JSON, else a string)."""
    for item in items:
        dotted, _, raw = item.partition("=")
        *sections, name = dotted.split(".")
        table = settings
        for section in sections:
            table = table.setdefault(section, {})
        try:
            table[name] = json.loads(raw)
        except ValueError:
            table[name] = raw
    return settings


def _ask(url: str, model: str = "base", question: str = "What is the capital of France?") -> float:
    started = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                   json={"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 16,
                         "temperature": 0})
    r.raise_for_status()
    return time.monotonic() - started


def _latencies(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1)}


def tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def _first_cycle(cli: list[str], config: Path, env: dict[str, str], server_pid: int) -> tuple[dict[str, Any], int]:
    """The first cycle through the CLI, its memory and the server's sampled throughout."""
    done = threading.Event()
    peak = [0]
    t0 = time.monotonic()
    proc = subprocess.Popen([*cli, "tune", "--now", "--json", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss([server_pid, proc.pid]))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.monotonic() - t0
    done.set()
    sampler.join()
    if not stdout.strip():  # killed (the kernel's OOM killer, a signal) before it could say anything
        raise SystemExit(f"the first cycle's process ended with {proc.returncode} and no outcome "
                         f"(peak memory of the server and the cycle: {peak[0] / 2**20:.0f} MB)")
    outcome = json.loads(stdout)
    outcome["wall_s"] = round(wall, 1)
    return outcome, round(peak[0] / 2**20)


def _training_under_load(cli: list[str], folder: Path, env: dict[str, str], url: str,
                         a: argparse.Namespace) -> tuple[dict[str, float], dict[str, Any]]:
    """`repotune train` for `a.load_minutes` (a budget: another key than the cycle's run, so it trains)
    while requests go one after another; the latencies while it trained, and what it trained."""
    config = folder / "config.toml"
    loaded = folder / "loaded.toml"
    loaded.write_text(config.read_text().replace(f"budget_minutes = {a.budget_minutes}",
                                                 f"budget_minutes = {a.load_minutes}"))
    proc = subprocess.Popen([*cli, "train", "--json", "--config", str(loaded)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    seconds: list[float] = []
    started = time.monotonic()
    while proc.poll() is None:  # the whole process: loading and tokenizing load the cores too
        seconds.append(_ask(url))
    out = json.loads(proc.stdout.read() if proc.stdout else "{}")
    record = out.get("training", {})
    kept = ("steps", "tokens", "seconds", "tokens_per_s", "stopped")
    return _latencies(seconds), {"process_s": round(time.monotonic() - started, 1), **{k: record.get(k) for k in kept}}


def _freshness(cli: list[str], config: Path, env: dict[str, str], url: str, repo: Path) -> dict[str, Any]:
    from serve.hooks import signature

    subject = "Teach the frobnicator to count widgets in batches"
    (repo / "frobnicator.py").write_text("def count_widgets(batch):\n    return sum(len(b) for b in batch)\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", subject], check=True,
                   env={**env, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "b@e.x", "GIT_COMMITTER_NAME": "Bench",
                        "GIT_COMMITTER_EMAIL": "b@e.x"})
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    before = _alias_version(url)
    tuner = subprocess.Popen([*cli, "tuner", "--config", str(config)], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        body = json.dumps({"ref": "refs/heads/main", "after": sha,
                           "repository": {"default_branch": "main"}}).encode()
        t0 = time.monotonic()
        r = httpx.post(f"{url}/admin/hooks/github", content=body, timeout=30,
                       headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": signature(SECRET, body),
                                "Content-Type": "application/json"})
        assert r.status_code == 202, r.text
        while _alias_version(url) == before and time.monotonic() - t0 < 3600:
            if _last_status(config, env) in ("rejected", "failed", "nothing_new"):
                break
            time.sleep(1)
        seconds = round(time.monotonic() - t0, 1)
        after = _alias_version(url)
        answer = None
        if after != before:
            answer = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                                timeout=300, json={"model": "bench", "temperature": 0, "max_tokens": 48, "messages": [
                                    {"role": "user", "content": f"What did commit {sha[:7]} change?"}]}
                                ).json()["choices"][0]["message"]["content"]
        return {"webhook_to_swap_s": seconds if after != before else None, "outcome": _last_status(config, env),
                "version_before": before, "version_after": after, "answer": answer,
                "answer_has_subject": bool(answer and subject.lower() in answer.lower())}
    finally:
        os.killpg(tuner.pid, signal.SIGTERM)
        tuner.wait(120)


def _alias_version(url: str) -> int | None:
    data = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()["data"]
    return next((m.get("version") for m in data if m["id"] == "bench"), None)


def _last_status(config: Path, env: dict[str, str]) -> str | None:
    out = subprocess.run([sys.executable, "-m", "repotune.cli", "tuner", "status", "--json", "--limit", "1",
                          "--config", str(config)], env=env, capture_output=True, text=True).stdout
    runs = json.loads(out)["runs"] if out else []
    return runs[0]["status"] if runs and runs[0]["trigger"] == "webhook" else None


if __name__ == "__main__":
    main()
