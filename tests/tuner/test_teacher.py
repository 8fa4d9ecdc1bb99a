"""The teacher generator: against a real vLLM serving builtin:tiny through `repotune serve`,
and, for what a hosted API does that a local engine does not (rate limits), against a
local replay of OpenAI's API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ingest.run import ingest
from repotune import db as store
from repotune.config import Secrets, Settings, parse
from serve.engine import free_port, wait_healthy
from tests.ingest.conftest import GitRepo
from tuner.data.build import build, read
from tuner.data.teacher import content_words, grounding
from tuner.data.teacher import parse as parse_pairs

KEY = "teacher-test-key"


def _settings(tmp_path: Path, repo: Path, **teacher: Any) -> Settings:
    raw = {"paths": {"data_dir": str(tmp_path / "state")}, "ingest": {"repo": str(repo), "workers": 1},
           "tuner": {"data": {"generators": ["templates", "teacher"]}, "teacher": teacher}}
    return Settings(config=parse(raw), source=None, root=tmp_path, secrets=Secrets(teacher_api_key=KEY))


def _cache_rows(settings: Settings) -> list[dict[str, Any]]:
    return list(store.open_db(store.db_path(settings.data_dir)).query("select * from teacher_cache"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny) -> Iterator[str]:
    """`repotune serve` on builtin:tiny, as a user would start it to serve as a teacher."""
    root = tmp_path_factory.mktemp("teacher-engine")
    port = free_port()
    (root / "config.toml").write_text(
        f'[serve]\nport = {port}\ndtype = "float32"\nmax_model_len = 2048\n[paths]\ndata_dir = "state"\n')
    env = {**os.environ, "REPOTUNE_API_KEYS": KEY}
    env.pop("REPOTUNE_CONFIG", None)
    (root / "state").mkdir()
    log = (root / "state" / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "repotune.cli", "serve", "--config", str(root / "config.toml")],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, proc, 300)
        except RuntimeError as e:
            raise AssertionError((root / "state" / "serve.log").read_text()[-3000:]) from e
        yield url + "/v1"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.vllm
def test_teacher_qa_from_a_local_vllm_is_cached_and_a_rerun_sends_no_request(history: GitRepo, tmp_path, engine):
    settings = _settings(tmp_path, history.path, base_url=engine, model="base", pairs_per_chunk=2, concurrency=4,
                         max_tokens=200, min_grounding=0.3)
    ingest(settings)
    first = build(settings)
    report = first.manifest.teacher
    assert report["chunks"] > 5 and report["requests"] == report["chunks"] and report["failed"] == 0, report
    assert report["stopped"] is None and not first.warnings
    rows = _cache_rows(settings)
    assert len(rows) == report["chunks"]
    # What parsed is exactly the JSON shape asked for; what did not is counted as malformed.
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(parse_pairs(r["raw"]) == json.loads(r["pairs"]) for r in ok)
    assert report["malformed"] == len(rows) - len(ok)
    assert all(parse_pairs(r["raw"]) is None for r in rows if r["status"] == "malformed")
    # Whatever was kept is grounded in its chunk and names it as its source.
    db = store.open_db(store.db_path(settings.data_dir))
    for example in (e for split in ("train", "val") for e in read(first.path, split) if e["generator"] == "teacher"):
        chunk = db.execute("select text from chunks where id = ?", [example["sources"]["chunks"][0]]).fetchone()[0]
        assert grounding(example["messages"][1]["content"], content_words(chunk)) >= 0.3
    again = build(settings)
    assert again.manifest.teacher["requests"] == 0 and again.manifest.teacher["cached"] == report["chunks"]
    assert again.path == first.path and again.reused


def test_a_teacher_that_is_down_leaves_the_templates_and_says_so(history: GitRepo, tmp_path, tiny):
    settings = _settings(tmp_path, history.path, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0,
                         concurrency=2, timeout_s=5)
    ingest(settings)
    built = build(settings)
    report = built.manifest.teacher
    assert "APIConnectionError" in report["stopped"] and report["requests"] <= 2 and report["failed"] >= 1
    assert built.warnings and "the teacher stopped early" in built.warnings[0]
    assert not _cache_rows(settings)
    assert [e for e in read(built.path, "train") if e["generator"] == "templates"]


class _OpenAIReplay(BaseHTTPRequestHandler):
    """OpenAI's chat completions as the hosted API answers them: `allow` requests are
    answered (with pairs grounded in the chunk, or with prose for chunks of commits), the
    rest get its 429 rate-limit error. Each test serves its own subclass (`_replay`), so
    what one test sets is never seen by another."""

    allow = 10_000
    seen = 0
    refuse = ""
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            type(self).seen += 1
            n = type(self).seen
        if n > self.allow:
            error = {"error": {"message": "Rate limit reached for requests", "type": "requests",
                               "param": None, "code": "rate_limit_exceeded"}}
            return self._send(429, error, {"retry-after": "0", "x-ratelimit-remaining-requests": "0"})
        prompt = body["messages"][-1]["content"]
        if self.refuse and self.refuse in prompt:  # what the hosted API says of a prompt over the context
            error = {"error": {"message": "This model's maximum context length is 128 tokens.",
                               "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
            return self._send(400, error)
        if prompt.startswith("Reply with one word"):  # the judge: only the README's answers are not supported
            verdict = "no" if "# Calculator" in prompt else "yes"
            return self._send(200, self._completion(n, body, verdict))
        text = re.search(r"<text>\n(.*?)\n</text>", prompt, re.S).group(1)
        about = re.search(r"^Text: (.*)$", prompt, re.M).group(1)
        answer = " ".join(text.split())[:300]  # the chunk's own words: grounded
        content = "Here are some questions: ..." if about.startswith("commit") else json.dumps(
            {"pairs": [{"question": f"What does {about} say?", "answer": answer}]})
        self._send(200, self._completion(n, body, content))

    @staticmethod
    def _completion(n: int, body: dict[str, Any], content: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def replay() -> Iterator[tuple[str, type[_OpenAIReplay]]]:
    """A replay of OpenAI's API on a free port, with state of its own: (base url, handler class)."""
    handler = type("Replay", (_OpenAIReplay,), {"allow": 10_000, "seen": 0, "refuse": "", "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


def test_rate_limits_that_outlast_the_retries_keep_what_was_answered(history: GitRepo, tmp_path, tiny, replay):
    url, api = replay
    api.allow = 3
    settings = _settings(tmp_path, history.path, base_url=url, concurrency=1, max_retries=1, min_grounding=0.5)
    ingest(settings)
    first = build(settings)
    report = first.manifest.teacher
    assert "RateLimitError (429)" in report["stopped"] and first.warnings
    rows = _cache_rows(settings)
    assert len(rows) == 3  # the three answered before the limit, kept as they arrived
    assert report["malformed"] == sum(r["status"] == "malformed" for r in rows)
    kept = [e for split in ("train", "val") for e in read(first.path, split) if e["generator"] == "teacher"]
    assert len(kept) == report["kept"] == sum(len(json.loads(r["pairs"])) for r in rows) - sum(
        report["dropped"].values())
    api.allow = 10_000  # the limit is lifted: the rest is asked for, and only the rest
    api.seen = 0
    second = build(settings)
    assert second.manifest.teacher["requests"] == report["chunks"] - 3 == api.seen
    assert second.manifest.teacher["stopped"] is None and not second.warnings
    assert second.manifest.teacher["malformed"] >= 1  # the prose answers: dropped and counted


def test_the_judge_drops_what_it_finds_unsupported_and_is_cached(history: GitRepo, tmp_path, tiny, replay):
    url, api = replay
    settings = _settings(tmp_path, history.path, base_url=url, concurrency=2, min_grounding=0.5, judge=True)
    ingest(settings)
    first = build(settings)
    report = first.manifest.teacher
    teacher = [e for split in ("train", "val") for e in read(first.path, split) if e["generator"] == "teacher"]
    assert report["dropped"].get("judge", 0) >= 1 and teacher and len(teacher) == report["kept"]
    assert not [e for e in teacher if e["sources"].get("path", "").startswith("README.md@")]
    sent = api.seen
    assert build(settings).manifest.teacher["requests"] == 0 and api.seen == sent


def test_a_chunk_the_teacher_refuses_is_skipped_and_asked_again_next_build(history: GitRepo, tmp_path, tiny, replay):
    url, api = replay
    api.refuse = "Text: doc docs/usage.md"
    settings = _settings(tmp_path, history.path, base_url=url, concurrency=2)
    ingest(settings)
    report = build(settings).manifest.teacher
    assert report["failed"] == 1 and report["dropped"]["refused by the teacher"] == 1
    assert report["stopped"] is None and len(_cache_rows(settings)) == report["chunks"] - 1
    api.refuse = ""
    assert build(settings).manifest.teacher["requests"] == 1  # only the refused one, again
