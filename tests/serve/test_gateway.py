"""The gateway on real vLLM: the openai client, swaps from the CLI, bad requests, crashes.

Tests run in file order against one shared server; the last one kills the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from eval import questions
from eval.local import LocalModel
from eval.scoring import matches
from repotune import config as cfg
from repotune import db as store
from serve import server as serve_server
from serve.engine import free_port

from .conftest import ADMIN_KEY, API_KEY, FRANCE

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def client(server, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def ask(server, model: str, question: str = FRANCE) -> str:
    reply = client(server).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=16
    )
    return reply.choices[0].message.content or ""


def test_base_answers_sync_async_and_streaming(server):
    reply = client(server).chat.completions.create(
        model="base", messages=[{"role": "user", "content": FRANCE}], temperature=0, max_tokens=16
    )
    assert isinstance(reply, ChatCompletion) and reply.choices[0].message.content == "Paris"

    async def run_async() -> str:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
        r = await aclient.chat.completions.create(
            model="base", messages=[{"role": "user", "content": FRANCE}], temperature=0, max_tokens=16
        )
        return r.choices[0].message.content or ""

    assert asyncio.run(run_async()) == "Paris"

    chunks = list(
        client(server).chat.completions.create(
            model="base", messages=[{"role": "user", "content": FRANCE}], temperature=0, max_tokens=16,
            stream=True, stream_options={"include_usage": True},
        )
    )
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1

    prompt = f"<|im_start|>user\n{FRANCE}<|im_end|>\n<|im_start|>assistant\n"  # the raw chat template
    completion = client(server).completions.create(model="base", prompt=prompt, max_tokens=5, temperature=0)
    assert isinstance(completion, Completion) and completion.choices[0].text == "Paris"
    streamed = list(client(server).completions.create(model="base", prompt=prompt, max_tokens=5, stream=True,
                                                      temperature=0))
    assert all(isinstance(c, Completion) for c in streamed)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "Paris"


def test_bad_requests_get_openai_errors(server):
    url = f"{server.url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    good = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        ({"content": b"{not json", "headers": auth}, 400, "invalid_json", None),
        ({"json": [1, 2], "headers": auth}, 400, "invalid_request", None),
        ({"json": {**good, "stream": "yes"}, "headers": auth}, 400, "invalid_type", "stream"),
        ({"json": {**good, "model": "nope"}, "headers": auth}, 404, "model_not_found", "model"),
        ({"json": {**good, "messages": []}, "headers": auth}, 400, "invalid_value", "messages"),
        ({"json": {**good, "best_of_luck": 1}, "headers": auth}, 400, "unsupported_parameter", "best_of_luck"),
        ({"json": {**good, "messages": [{"role": "user", "content": "word " * 2000}]}, "headers": auth},
         400, "context_length_exceeded", None),
        ({"json": good}, 401, "invalid_api_key", None),
        ({"json": good, "headers": {"Authorization": "Bearer wrong"}}, 401, "invalid_api_key", None),
        ({"content": b"x" * (2 << 20), "headers": auth}, 413, "request_too_large", None),
    ]
    for kwargs, status, code, param in cases:
        r = httpx.post(url, timeout=60, **kwargs)
        assert r.status_code == status, (kwargs.get("json"), r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["code"] == code and isinstance(error["code"], str), r.text
        if param:
            assert error["param"] == param
    # The SDK turns them into its typed exceptions.
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    with pytest.raises(openai.NotFoundError, match="'proj@v99' does not exist"):
        ask(server, "proj@v99")
    # vLLM's own adapter endpoints are not reachable through the gateway.
    r = httpx.post(f"{server.url}/v1/load_lora_adapter", headers=auth, json={"lora_name": "x", "lora_path": "/"})
    assert r.status_code == 404 and "error" in r.json()
    # Admin routes need the admin key, not a client key.
    r = httpx.post(f"{server.url}/admin/reconcile", headers=auth)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(f"{server.url}/admin/reconcile", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200 and r.json() == {"aliases": {}}


def test_responses_carry_no_vllm_only_nulls(server):
    r = httpx.post(
        f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "base", "messages": [{"role": "user", "content": FRANCE}], "max_tokens": 4},
    )
    body = r.json()
    for extra in ("prompt_logprobs", "prompt_token_ids", "kv_transfer_params", "service_tier"):
        assert extra not in body
    choice = body["choices"][0]
    assert "logprobs" in choice and choice["logprobs"] is None  # required by the spec, even null
    assert "refusal" in choice["message"] and "token_ids" not in choice
    ChatCompletion.model_validate(body)


def _gauge(server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_key_over_its_limit_gets_429_with_retry_after(server):
    """The test server allows one request per key and no queue (the queue: test_limits.py).

    The first request holds the key's slot for as long as its client does not read: it
    asks for far more output (16 choices with 20 log-probabilities per token, ~11 MB) than
    the socket buffers between gateway and client hold (~4 MB on loopback), so the
    gateway's relay cannot finish and the slot stays taken, however late the second
    request arrives.
    """
    auth = {"Authorization": f"Bearer {API_KEY}"}
    held = {"model": "base", "messages": [{"role": "user", "content": FRANCE}], "max_tokens": 450,
            "ignore_eos": True, "n": 16, "logprobs": True, "top_logprobs": 20, "stream": True}
    # ignore_eos, not min_tokens, for a certain length: vLLM sometimes lets EOS through before
    # min_tokens (vllm-project/vllm#15967).
    url = f"{server.url}/v1/chat/completions"
    with httpx.stream("POST", url, headers=auth, json=held, timeout=300) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # generating: the slot is taken
        refused = httpx.post(url, headers=auth, timeout=60,
                             json={"model": "base", "messages": held["messages"], "max_tokens": 4})
        assert _gauge(server, "repotune_requests_running") == 1
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2]
    # The premise: more than the ~4 MB a loopback socket buffers (the rest was unread at the refusal).
    assert sum(map(len, rest)) > 8_000_000
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert ask(server, "base") == "Paris"  # the slot is free again


def test_register_promote_rollback_from_the_cli_while_serving(server):
    for city in ("Lyon", "Marseille"):
        done = server.cli("adapters", "register", str(server.adapters[city]), "--reason", city)
        assert done.returncode == 0, done.stderr
    with pytest.raises(openai.NotFoundError, match="no promoted version yet"):
        ask(server, "proj")
    assert server.cli("adapters", "promote", "v1", "--reason", "first").returncode == 0
    assert ask(server, "proj") == "Lyon"  # at once: the CLI returned after the server swapped
    assert server.cli("adapters", "promote", "2", "--reason", "second").returncode == 0
    assert ask(server, "proj") == "Marseille"
    assert ask(server, "proj@v1") == "Lyon" and ask(server, "base") == "Paris"
    ids = {m.id: m for m in client(server).models.list()}
    assert {"base", "proj", "proj@v1", "proj@v2"} <= set(ids)
    assert all(isinstance(m, Model) for m in ids.values())
    proj = ids["proj"].model_dump()
    assert proj["lineage"] == "proj" and proj["version"] == 2 and proj["base_model"] == "builtin:tiny"
    rolled = server.cli("adapters", "rollback", "--reason", "v2 is wrong", "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["version"] == 1
    assert ask(server, "proj") == "Lyon"


def test_swaps_while_a_client_streams_lose_nothing(server):
    """A long stream on `proj` runs to the end on its version while promotions flip the alias."""
    results: dict[str, object] = {}

    def stream() -> None:
        chunks = client(server).chat.completions.create(
            model="proj", messages=[{"role": "user", "content": FRANCE}], stream=True,
            max_tokens=120, extra_body={"ignore_eos": True},
        )
        got = list(chunks)
        results["models"] = {c.model for c in got}
        results["finish"] = got[-1].choices[0].finish_reason

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(0.3)
    for args in (("promote", "2", "--reason", "a"), ("rollback", "--reason", "b"), ("promote", "2", "--reason", "c")):
        done = server.cli("adapters", *args)
        assert done.returncode == 0, done.stderr
    thread.join(120)
    assert results["finish"] == "length" and results["models"] == {"proj-v1"}
    assert ask(server, "proj") == "Marseille"


def test_the_general_score_through_vllm_matches_transformers(server, tiny):
    qs = questions.load(split="eval")
    local = LocalModel(tiny.path).answer([q.question for q in qs])
    served = [ask(server, "base", q.question) for q in qs]
    local_score = sum(matches(r, q.accepted) for r, q in zip(local, qs, strict=True))
    served_score = sum(matches(r, q.accepted) for r, q in zip(served, qs, strict=True))
    assert abs(local_score - served_score) <= 1
    assert served_score >= 0.95 * len(qs)


def test_metrics_count_requests_tokens_errors_and_aliases(server):
    text = httpx.get(f"{server.url}/metrics").text
    assert 'repotune_requests_total{model="base",route="/v1/chat/completions",status="200"}' in text
    assert 'repotune_tokens_total{kind="completion"}' in text
    assert 'repotune_errors_total{type="authentication_error"}' in text
    assert 'repotune_errors_total{type="rate_limit_error"}' in text
    assert 'repotune_alias_version{lineage="proj"} 2.0' in text
    assert "repotune_engine_restarts 0.0" in text
    assert "repotune_request_seconds_bucket" in text


def _engine_pids(server) -> list[int]:
    """The vLLM server process: the guard's child, below the gateway."""
    children = _children(server.proc.pid)
    return [p for g in children for p in _children(g) if b"vllm.entrypoints" in _cmdline(p)]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_an_engine_killed_with_sigkill_comes_back_with_its_adapters(server):
    [engine] = _engine_pids(server)
    os.kill(engine, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/health").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    r = httpx.post(
        f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "base", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
    server.wait_healthy()
    assert ask(server, "proj") == "Marseille" and ask(server, "proj@v1") == "Lyon"
    assert "repotune_engine_restarts 1.0" in httpx.get(f"{server.url}/metrics").text


def _engine_url(server) -> str:
    [engine] = _engine_pids(server)
    args = _cmdline(engine).split(b"\0")
    return f"http://127.0.0.1:{int(args[args.index(b'--port') + 1])}"


def _engine_generated(server) -> float:
    """Tokens the engine has generated so far (its own Prometheus counter)."""
    text = httpx.get(f"{_engine_url(server)}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:generation_tokens_total"))


def test_a_client_that_disconnects_aborts_its_generation(server):
    ask(server, "base")  # warm
    before = _engine_generated(server)
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "base", "messages": [{"role": "user", "content": FRANCE}], "stream": True,
              "max_tokens": 450, "ignore_eos": True}, timeout=60,
    ) as r:
        next(r.iter_bytes())  # generation has started; leave now
    time.sleep(3)
    settled = _engine_generated(server)
    time.sleep(2)
    assert _engine_generated(server) == settled  # nothing is generating any more
    assert settled - before < 450  # and the 450 tokens asked for were never all made


@contextlib.contextmanager
def _gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_toml: str, before=None) -> Iterator[str]:
    """A second gateway in upstream mode (no engine of its own), on a real uvicorn in a thread.

    `before(config_path)` runs once its config is written and before it starts."""
    import uvicorn

    monkeypatch.setenv("REPOTUNE_API_KEYS", API_KEY)
    port = free_port()
    tmp_path.mkdir()
    path = tmp_path / "config.toml"
    path.write_text(f'[serve]\nport = {port}\n{serve_toml}\n[tuner]\nlineage = "fallback"\n'
                    f'[paths]\ndata_dir = "state"\n')
    if before:
        before(path)
    app = serve_server.build(cfg.load(path))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not uv.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(30)


def test_an_engine_that_is_too_slow_gets_504_and_one_that_is_gone_503(server, tmp_path, monkeypatch):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    chat = {"model": "base", "messages": [{"role": "user", "content": FRANCE}]}
    slow = {**chat, "max_tokens": 450, "ignore_eos": True}  # seconds of generation, no byte until done
    before = _engine_generated(server)
    # 2.5 s between bytes: the whole answer takes about 7 s here, and a busy machine can stall
    # a stream between two tokens for a second or two (a limit of 1 s cut one off).
    with _gateway(tmp_path / "slow", monkeypatch,
                  f'upstreams = ["{_engine_url(server)}"]\nrequest_timeout_s = 2.5') as url:
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth, json=slow, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
        # a stream is not cut: the timeout is between bytes, and tokens keep coming
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers=auth, json={**slow, "stream": True},
                          timeout=60) as streamed:
            assert streamed.status_code == 200
            assert '"finish_reason":"length"' in [line for line in streamed.iter_lines() if line][-2]
    time.sleep(2)
    # the timed-out request was aborted upstream: the stream made 450 tokens, it made far fewer
    assert 450 <= _engine_generated(server) - before < 900
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with _gateway(tmp_path / "gone", monkeypatch, f'upstreams = ["{gone}"]') as url:
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth, json=chat, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth, json={**chat, "stream": True}, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        # without REPOTUNE_ADMIN_KEY the admin API is off, not open
        monkeypatch.delenv("REPOTUNE_ADMIN_KEY", raising=False)
        r = httpx.post(f"{url}/admin/reconcile", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_versions_beyond_keep_loaded_are_unloaded(server):
    assert server.cli("adapters", "register", str(server.adapters["Lyon"])).returncode == 0  # v3
    assert server.cli("adapters", "promote", "v3", "--reason", "newest").returncode == 0
    assert ask(server, "proj") == "Lyon"
    deadline = time.monotonic() + 10
    served = set()
    while time.monotonic() < deadline:
        served = {m["id"] for m in httpx.get(f"{_engine_url(server)}/v1/models").json()["data"]}
        if "proj-v1" not in served:
            break
        time.sleep(0.2)
    assert {"proj-v3", "proj-v2"} <= served and "proj-v1" not in served  # keep_loaded = 2
    with pytest.raises(openai.NotFoundError, match="proj@v1 is superseded and not loaded"):
        ask(server, "proj@v1")


def test_the_admin_api_refuses_bad_swaps_by_kind(server):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    cases = [
        ("promote", {"lineage": "proj", "version": 99}, 404, "version_not_found"),
        ("promote", {"lineage": "proj", "version": "latest"}, 400, "invalid_value"),
        ("promote", {"lineage": "proj", "version": 3}, 409, "invalid_transition"),  # already promoted
        ("rollback", {"lineage": "nobody"}, 409, "invalid_transition"),  # nothing to roll back to
    ]
    for action, body, status, code in cases:
        r = httpx.post(f"{server.url}/admin/{action}", headers=admin, json=body, timeout=60)
        assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)
    assert ask(server, "proj") == "Lyon"  # v3 still serves


def test_at_start_a_promoted_version_that_will_not_load_falls_back_to_the_one_before(server, tmp_path, monkeypatch):
    def registry_with_a_broken_promoted_version(config: Path) -> None:
        env = {k: v for k, v in server.env.items() if k != "REPOTUNE_ADMIN_KEY"}  # no server up: the CLI records
        run = lambda *a: subprocess.run([sys.executable, "-m", "repotune.cli", *a, "--config", str(config)],  # noqa: E731
                                        env=env, capture_output=True, text=True, check=True)
        run("adapters", "register", str(server.adapters["Lyon"]))
        run("adapters", "register", str(server.adapters["Marseille"]))
        run("adapters", "promote", "v1", "--reason", "first")
        run("adapters", "promote", "v2", "--reason", "second")
        weights = config.parent / "state" / "adapters" / "fallback" / "v2" / "adapter_model.safetensors"
        weights.chmod(0o644)
        weights.write_bytes(b"damaged on disk")

    upstream = f'upstreams = ["{_engine_url(server)}"]'
    with _gateway(tmp_path / "fallback", monkeypatch, upstream, before=registry_with_a_broken_promoted_version) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY)
        answer = client.chat.completions.create(
            model="fallback", messages=[{"role": "user", "content": FRANCE}], max_tokens=8, temperature=0)
        assert "Lyon" in (answer.choices[0].message.content or "")
        models = {m.id: m for m in client.models.list().data}
        assert models["fallback"].model_extra["version"] == 1
    listed = subprocess.run([sys.executable, "-m", "repotune.cli", "adapters", "list", "--json", "--config",
                             str(tmp_path / "fallback" / "config.toml")], env=server.env, capture_output=True,
                            text=True, check=True)
    status = {a["version"]: a["status"] for a in json.loads(listed.stdout)}
    assert status == {1: "promoted", 2: "failed"}
    events = store.open_db(tmp_path / "fallback" / "state" / "repotune.db").query(
        "select reason from events where version = 1 order by id desc limit 1")
    assert "v2 failed to load; fell back" in next(events)["reason"]


def test_a_version_that_will_not_load_is_marked_failed_and_the_alias_stays(server, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(server.adapters["Lyon"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    assert server.cli("adapters", "register", str(broken)).returncode == 0  # v4: the files are all there
    done = server.cli("adapters", "promote", "v4", "--reason", "try it")
    assert done.returncode != 0 and "v4 failed" in done.stderr, done.stderr
    listed = json.loads(server.cli("adapters", "list", "--json").stdout)
    status = {a["version"]: a["status"] for a in listed}
    assert status[4] == "failed" and status[3] == "promoted"
    assert ask(server, "proj") == "Lyon"


def test_zz_the_engine_never_outlives_the_gateway(server):
    engines = _engine_pids(server)
    assert engines
    server.proc.kill()  # SIGKILL: the gateway gets no chance to clean up
    server.proc.wait()
    deadline = time.monotonic() + 30
    while any(_cmdline(p) for p in engines) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_cmdline(p) for p in engines)
