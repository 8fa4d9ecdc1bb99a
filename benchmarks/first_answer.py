"""`make run` as a newcomer meets it: `repotune up` on a fresh clone of this repository, from an
empty store, until the openai client gets an answer about a commit that `base` could not give.

The repository as committed is cloned into a new folder, and `repotune up` runs there on the
shipped `config.toml` (the embedded default `make run` uses), with the base, the training
budget and any `--set` given here, and with no keys in the environment: up makes them, as
for a newcomer. Timed from up's start:
- ready: up printed how to connect (`base` answers from then on);
- the first cycle's end: its status and each step's time (ingest, data, train, eval);
- served: the lineage's alias answers with the promoted version;
- the first answer: the held-out commit questions the gate asked (the phrasings training
  never used, about the facts the budget covered) go to `base` and to the lineage through
  the gateway with the official openai client, one after the other, scored by the gate's
  key facts. The first that the lineage answers right and `base` does not is the
  newcomer's answer; its time is when it came back.
Also the peak memory of up's process tree (the server, its engine, the tuner and its cycle).
The model cache is kept: the base's cold build is measured by `benchmarks.builtin_tiny` and
`benchmarks.builtin_smol`.

    python -m benchmarks.first_answer [--base builtin:tiny] [--budget-minutes 4] [--at REV] [--set train.epochs=5 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from benchmarks.cycle import overridden, tree_rss

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="builtin:tiny")
    ap.add_argument("--budget-minutes", type=float, default=4.0, help="train.budget_minutes")
    ap.add_argument("--eval-max", type=int, default=100, help="tuner.data.eval_max")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="another setting, e.g. train.epochs=5 (the value as JSON, else a string); repeatable")
    ap.add_argument("--timeout-minutes", type=float, default=60.0, help="give up on the first cycle after this")
    ap.add_argument("--at", default="", metavar="REV",
                    help="learn this repository as it was at REV (the code that runs is still HEAD's): the same "
                         "newest facts as an earlier run, for a comparison pair by pair")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "first-answer"))
    a = ap.parse_args()

    from serve.engine import free_port

    folder = Path(tempfile.mkdtemp(prefix="first-answer-"))
    clone = folder / "project"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    learned = clone
    if a.at:  # a second clone, its branch moved back to REV, is the repository up learns
        learned = folder / "learned"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(learned)], check=True)
        subprocess.run(["git", "-C", str(learned), "reset", "--quiet", "--hard", a.at], check=True)
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    settings = overridden(shipped, [
        f"model.base={a.base}", f"paths.data_dir={folder / 'state'}", f"ingest.repo={learned}",
        f"serve.port={free_port()}", f"train.budget_minutes={a.budget_minutes}", f"tuner.data.eval_max={a.eval_max}",
        *a.set])
    config = folder / "config.toml"
    config.write_text(tomli_w.dumps(settings))
    result: dict[str, Any] = {"base": a.base, "budget_minutes": a.budget_minutes, "eval_max": a.eval_max,
                              "settings": a.set, "at": _head(), "learned_at": a.at or None, "run_folder": str(folder)}
    print(f"run folder: {folder}", flush=True)

    env = {k: v for k, v in os.environ.items() if k not in ("REPOTUNE_API_KEYS", "REPOTUNE_ADMIN_KEY",
                                                              "REPOTUNE_CONFIG")}
    t0 = time.monotonic()
    up = subprocess.Popen([sys.executable, "-m", "repotune.cli", "up", "--config", str(config)], cwd=clone, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    said: list[str] = []
    peak = [0]
    ended = threading.Event()
    threading.Thread(target=_read, args=(up, said, folder / "up.log"), daemon=True).start()
    threading.Thread(target=_sample, args=(up.pid, peak, ended), daemon=True).start()
    try:
        ready = _until(lambda: any("repotune is up" in line for line in said), up, 1800)
        result["ready_s"] = round(ready - t0, 1)
        print(f"ready (base answers) after {result['ready_s']} s", flush=True)
        from repotune import config as cfg

        loaded = cfg.load(config, env={})
        cycle = _first_cycle(loaded, up, a.timeout_minutes * 60)
        result["cycle"] = {**cycle, "ended_s": round(time.monotonic() - t0, 1)}
        print(f"first cycle: {cycle['status']} after {result['cycle']['ended_s']} s; steps "
              f"{[(s['name'], s['seconds']) for s in cycle['steps']]}", flush=True)
        if cycle["status"] == "promoted":
            url = f"http://127.0.0.1:{loaded.config.serve.port}/v1"
            key = (loaded.data_dir / "api_key").read_text().strip()
            served = _until(lambda: _alias_version(url, key, loaded.lineage) == cycle["version"], up, 300)
            result["served_s"] = round(served - t0, 1)
            result["questions"] = _ask_commits(loaded, url, key, t0)
            first = next((q for q in result["questions"] if q["adapter_right"] and not q["base_right"]), None)
            result["first_answer_s"] = first["answered_s"] if first else None
            right = sum(q["adapter_right"] for q in result["questions"])
            print(f"served after {result['served_s']} s; commit questions right: adapter {right}, base "
                  f"{sum(q['base_right'] for q in result['questions'])} of {len(result['questions'])}; "
                  f"first answer base could not give: {result['first_answer_s']} s", flush=True)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(180)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        ended.set()
        result["peak_rss_mb"] = round(peak[0] / 2**20)
        out = Path(f"{a.out}-{a.base.replace(':', '-')}.json")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {out}")


def _head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _read(up: subprocess.Popen[str], said: list[str], log: Path) -> None:
    with log.open("w") as f:
        for line in up.stdout or []:
            said.append(line)
            f.write(line)
            f.flush()


def _sample(pid: int, peak: list[int], ended: threading.Event) -> None:
    while not ended.is_set():
        peak[0] = max(peak[0], tree_rss([pid]))
        time.sleep(1)


def _until(check: Any, up: subprocess.Popen[str], timeout: float) -> float:
    """When `check()` first held (monotonic time); fails when up ended or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while not check():
        if up.poll() is not None:
            raise SystemExit(f"repotune up ended with {up.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout:.0f} s")
        time.sleep(1)
    return time.monotonic()


def _first_cycle(settings: Any, up: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    from repotune import cycles
    from repotune import db as store

    path = store.db_path(settings.data_dir)
    found: list[Any] = []
    opened: list[Any] = []  # the store, opened once it exists (not once a poll)

    def decided() -> bool:
        if not opened and path.exists():
            opened.append(store.open_db(path))
        if not opened:
            return False
        runs = cycles.runs(opened[0], settings.lineage, limit=1)
        found[:] = runs
        return bool(runs) and runs[0].status != "running"

    _until(decided, up, timeout)
    run = found[0]
    return {"status": run.status, "version": run.version, "error": run.error,
            "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds, "figures": s.figures}
                      for s in run.steps]}


def _alias_version(url: str, key: str, lineage: str) -> int | None:
    data = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()["data"]
    return next((m.get("version") for m in data if m["id"] == lineage), None)


def _ask_commits(settings: Any, url: str, key: str, t0: float) -> list[dict[str, Any]]:
    """The gate's held-out commit questions (those about what the promoted version covers), asked
    of base and of the lineage through the gateway, each scored by its key facts."""
    from openai import OpenAI

    from eval import domain, facts
    from eval.judge import covered
    from repotune import datasets, registry
    from repotune import db as store

    db = store.open_db(store.db_path(settings.data_dir))
    adapter = registry.promoted(db, settings.lineage)
    assert adapter is not None
    folder = datasets.find(settings.data_dir, settings.lineage, adapter.manifest.dataset)
    rows, _ = covered([r for r in datasets.read(folder, "eval") if r.get("key_facts")], adapter)
    client = OpenAI(base_url=url, api_key=key, max_retries=0)
    out = []
    for row in (r for r in rows if r["kind"] == "commit"):
        question = row["messages"][0]["content"]
        entry: dict[str, Any] = {"question": question, "gold": row["messages"][-1]["content"]}
        for model, name in (("base", "base"), (settings.lineage, "adapter")):
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], temperature=0,
                max_tokens=domain.MAX_NEW_TOKENS).choices[0].message.content or ""
            entry[name], entry[f"{name}_right"] = reply, facts.holds(reply, row["key_facts"], question)
        entry["answered_s"] = round(time.monotonic() - t0, 1)
        out.append(entry)
    return out


if __name__ == "__main__":
    main()
