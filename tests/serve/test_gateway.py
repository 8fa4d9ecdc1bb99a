"""The gateway on real vLLM: the openai client, swaps from the CLI, bad requests, crashes.

The tests share one server (`conftest.server`) but none depends on another: each that
needs adapters has a lineage of its own, metrics are read before and after, and a test
that kills the server leaves a new one to the next. Any one passes alone, in any order.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from prometheus_client.parser import text_string_to_metric_families

from eval import questions
from eval.local import LocalModel
from eval.scoring import matches
from repotune import config as cfg
from repotune import db as store
from serve import checks
from serve import server as serve_server
from serve.engine import free_port

from .conftest import ADMIN_KEY, API_KEY, FRANCE

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def client(server, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def ask(server, model: str, question: str = FRANCE, key: str = API_KEY) -> str:
    reply = client(server, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=16
    )
    return reply.choices[0].message.content or ""


def promote(server, lineage: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = server.cli("adapters", *args, "--lineage", lineage)
    assert done.returncode == 0, done.stderr
    return done


# A streamed answer far bigger (8 choices x 900 tokens x 20 log-probabilities, ~11 MB)
# than the socket buffers between gateway and client hold (~4 MB on loopback): while
# the client does not read, the gateway's relay cannot finish, so the request stays
# open — holding its key's units and its version — for as long as the test wants.
# ignore_eos, not min_tokens, for a certain length: vLLM sometimes lets EOS through
# before min_tokens (vllm-project/vllm#15967).
HELD = {"messages": [{"role": "user", "content": FRANCE}], "max_tokens": 900, "ignore_eos": True, "n": 8,
        "logprobs": True, "top_logprobs": 20, "temperature": 0.01, "seed": 7, "stream": True}


@dataclass
class Streamed:
    """What a chat stream carried: the engine models named, each choice's text and end."""
    models: set[str] = field(default_factory=set)
    texts: dict[int, str] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    size: int = 0
    done: bool = False

    def add(self, line: str) -> None:
        if not line.startswith("data: "):
            return
        self.size += len(line)
        if line == "data: [DONE]":
            self.done = True
            return
        chunk = json.loads(line.removeprefix("data: "))
        assert "error" not in chunk, chunk
        self.models.add(chunk["model"])
        for choice in chunk["choices"]:
            i = choice["index"]
            self.texts[i] = self.texts.get(i, "") + (choice["delta"].get("content") or "")
            self.finish[i] = choice.get("finish_reason") or self.finish.get(i)


@contextlib.contextmanager
def held_stream(url: str, model: str) -> Iterator[tuple[Streamed, Callable[[], None]]]:
    """Open HELD on `model`, read its first chunk, and hand back (what was read, read the rest)."""
    got = Streamed()
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers=AUTH, json={**HELD, "model": model},
                      timeout=600) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()
        for line in lines:
            got.add(line)
            if got.models:
                break  # generating: the request is open

        def rest() -> None:
            for line in lines:
                got.add(line)

        yield got, rest


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the gateway's /metrics, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=60).text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(sampled: dict, name: str, **labels: str) -> float:
    return sampled.get((name, tuple(sorted(labels.items()))), 0.0)


def engine_lists(server, name: str) -> bool:
    return name in {m["id"] for m in httpx.get(f"{_engine_url(server)}/v1/models", timeout=60).json()["data"]}


def eventually(predicate: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


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
    good = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    message = lambda **m: {**good, "messages": [{"role": "user", "content": "hi", **m}]}  # noqa: E731
    cases = [
        ({"content": b"{not json", "headers": AUTH}, 400, "invalid_json", None, None),
        # nesting deep enough to exhaust the parser is malformed input too, not a server error
        ({"content": b"[" * 100_000 + b"]" * 100_000, "headers": AUTH}, 400, "invalid_json", None, None),
        ({"content": b'{"model": "base", "temperature": NaN}', "headers": AUTH}, 400, "invalid_json", None, None),
        ({"json": [1, 2], "headers": AUTH}, 400, "invalid_request", None, None),
        ({"json": {**good, "stream": "yes"}, "headers": AUTH}, 400, "invalid_type", "stream", "must be a boolean"),
        ({"json": {**good, "model": "nope"}, "headers": AUTH}, 404, "model_not_found", "model", None),
        ({"json": {**good, "messages": []}, "headers": AUTH}, 400, "invalid_value", "messages", None),
        ({"json": {**good, "best_of_luck": 1}, "headers": AUTH}, 400, "unsupported_parameter", "best_of_luck",
         None),
        ({"json": message(role="wizard"), "headers": AUTH}, 400, "invalid_value", "messages[0].role", "'wizard'"),
        ({"json": message(content=5), "headers": AUTH}, 400, "invalid_type", "messages[0].content",
         "messages[0].content must be a string or an array of content parts"),
        ({"json": {**good, "n": 1000}, "headers": AUTH}, 400, "invalid_value", "n", "serve.max_n"),
        ({"json": {**good, "n": 9}, "headers": AUTH}, 400, "invalid_value", "n", "limit of 8"),
        ({"json": {**good, "messages": [{"role": "user", "content": "word " * 2000}]}, "headers": AUTH},
         400, "context_length_exceeded", None, None),
        ({"json": good}, 401, "invalid_api_key", None, None),
        ({"json": good, "headers": {"Authorization": "Bearer wrong"}}, 401, "invalid_api_key", None, None),
        ({"content": b"x" * (2 << 20), "headers": AUTH}, 413, "request_too_large", None, None),
    ]
    for kwargs, status, code, param, words in cases:
        r = httpx.post(url, timeout=60, **kwargs)
        assert r.status_code == status, (kwargs.get("json"), r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["code"] == code and isinstance(error["code"], str), r.text
        assert error["param"] == param or param is None, r.text
        assert words is None or words in error["message"], r.text
    # best_of is bounded on the completions endpoint as n is
    r = httpx.post(f"{server.url}/v1/completions", headers=AUTH, timeout=60,
                   json={"model": "base", "prompt": "hi", "max_tokens": 2, "best_of": 20})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of", r.text
    # The prompt's log-probabilities would kill the engine with LoRA enabled (vllm#16668): refused,
    # and the engine still answers.
    r = httpx.post(f"{server.url}/v1/completions", headers=AUTH, timeout=60,
                   json={"model": "base", "prompt": "hi", "max_tokens": 1, "echo": True, "logprobs": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo", r.text
    assert ask(server, "base")
    # The SDK turns them into its typed exceptions.
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    with pytest.raises(openai.NotFoundError, match="'nobody@v99' does not exist"):
        ask(server, "nobody@v99")
    # vLLM's own adapter endpoints are not reachable through the gateway.
    r = httpx.post(f"{server.url}/v1/load_lora_adapter", headers=AUTH, json={"lora_name": "x", "lora_path": "/"},
                   timeout=60)
    assert r.status_code == 404 and "error" in r.json()
    # Admin routes need the admin key, not a client key.
    r = httpx.post(f"{server.url}/admin/reconcile", headers=AUTH, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(f"{server.url}/admin/reconcile", headers=ADMIN, timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["aliases"], dict)


def test_the_engines_own_validation_errors_read_as_one_sentence(server):
    """What the gateway lets through and vLLM refuses comes back readable, with its param."""
    good = {"model": "base", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    for param, bad in (("tools", [{"type": "function"}]),
                       ("tools", [{"type": "function", "function": {"name": 5}}])):
        body = {**good, param: bad}
        checks.check(body, chat=True, max_n=8)  # the gateway's checks pass it: the engine refuses it
        r = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=60, json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert "validation error" not in error["message"] and "{'" not in error["message"], r.text
        assert (error["param"] or "").startswith(param), r.text
        assert error["message"].startswith(error["param"]) and "\n" not in error["message"], r.text


def test_responses_carry_no_vllm_only_nulls(server):
    r = httpx.post(
        f"{server.url}/v1/chat/completions", headers=AUTH, timeout=60,
        json={"model": "base", "messages": [{"role": "user", "content": FRANCE}], "max_tokens": 4},
    )
    body = r.json()
    for extra in ("prompt_logprobs", "prompt_token_ids", "kv_transfer_params", "service_tier"):
        assert extra not in body
    choice = body["choices"][0]
    assert "logprobs" in choice and choice["logprobs"] is None  # required by the spec, even null
    assert "refusal" in choice["message"] and "token_ids" not in choice
    ChatCompletion.model_validate(body)


def test_a_key_over_its_limit_gets_429_with_retry_after(server):
    """The test server gives a key 8 units and no queue: a request of n=8 takes them all.

    While HELD (n=8) is open, a request of n=1 on the same key is refused — it would be
    let through if the limit counted requests rather than what they cost the engine —
    and one on another key is not.
    """
    url = f"{server.url}/v1/chat/completions"
    small = {"model": "base", "messages": HELD["messages"], "max_tokens": 4}
    with held_stream(server.url, "base") as (got, rest):
        refused = httpx.post(url, headers=AUTH, timeout=60, json=small)
        other = httpx.post(url, headers={"Authorization": "Bearer other-key"}, timeout=60, json=small)
        assert value(metrics(server.url), "repotune_requests_running") == 1
        rest()
    assert got.done and set(got.finish.values()) == {"length"} and len(got.finish) == 8
    # The premise: more than the ~4 MB a loopback socket buffers (the rest was unread at the refusal).
    assert got.size > 8_000_000
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert other.status_code == 200, other.text
    assert ask(server, "base") == "Paris"  # the units are free again


def test_register_promote_rollback_from_the_cli_while_serving(server, lineage):
    with pytest.raises(openai.NotFoundError, match="no promoted version yet"):
        ask(server, lineage)
    promote(server, lineage, "promote", "v1", "--reason", "first")
    assert ask(server, lineage) == "Lyon"  # at once: the CLI returned after the server swapped
    promote(server, lineage, "promote", "2", "--reason", "second")
    assert ask(server, lineage) == "Marseille"
    assert ask(server, f"{lineage}@v1") == "Lyon" and ask(server, "base") == "Paris"
    ids = {m.id: m for m in client(server).models.list()}
    assert {"base", lineage, f"{lineage}@v1", f"{lineage}@v2"} <= set(ids)
    assert all(isinstance(m, Model) for m in ids.values())
    listed = ids[lineage].model_dump()
    assert listed["lineage"] == lineage and listed["version"] == 2 and listed["base_model"] == "builtin:tiny"
    rolled = promote(server, lineage, "rollback", "--reason", "v2 is wrong", "--json")
    assert json.loads(rolled.stdout)["version"] == 1
    assert ask(server, lineage) == "Lyon"


def test_swaps_while_a_client_streams_lose_nothing(server, lineage):
    """A stream on the alias stays on its version while promotions flip the alias under it.

    The stream is still open (the gateway still relaying it) when each swap returns.
    """
    promote(server, lineage, "promote", "v1", "--reason", "first")
    with held_stream(server.url, lineage) as (got, rest):
        for args in (("promote", "2", "--reason", "a"), ("rollback", "--reason", "b"),
                     ("promote", "2", "--reason", "c")):
            promote(server, lineage, *args)
            assert not got.done and value(metrics(server.url), "repotune_requests_running") == 1
        # new requests get the new version (on another key: the stream holds all of this one's units)
        assert ask(server, lineage, key="other-key") == "Marseille"
        rest()
    assert got.done and got.models == {f"{lineage}-v1"}
    assert len(got.finish) == 8 and set(got.finish.values()) == {"length"}
    assert all(text.startswith("Lyon") for text in got.texts.values())


def test_with_keep_loaded_1_a_version_replaced_mid_stream_still_ends_the_stream_whole(
    server, tmp_path, monkeypatch
):
    """The risky case: the only version kept loaded is the one a stream is reading from.

    A gateway with `keep_loaded = 1` promotes v2 while a stream on v1 is open: v1 leaves
    the engine only once the stream has ended, and the stream ends whole, every token
    from v1 (the same text as v1 gives unstreamed).
    """
    name = f"keep1_{os.getpid()}"

    def registry_with_v1_promoted(config: Path) -> None:
        for city in ("Lyon", "Marseille"):
            _offline_cli(server, config, "adapters", "register", str(server.adapters[city]))
        _offline_cli(server, config, "adapters", "promote", "v1", "--reason", "first")

    toml = f'upstreams = ["{_engine_url(server)}"]\nkeep_loaded = 1\nmax_n = 8\nmax_concurrent_per_key = 8'
    with _gateway(tmp_path / "keep1", monkeypatch, toml, lineage=name, before=registry_with_v1_promoted,
                  admin_key=ADMIN_KEY) as url:
        unstreamed = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=600,
                                json={**HELD, "model": f"{name}@v1", "stream": False}).json()
        with held_stream(url, name) as (got, rest):
            r = httpx.post(f"{url}/admin/promote", headers=ADMIN, timeout=600,
                           json={"lineage": name, "version": 2, "reason": "mid-stream"})
            assert r.status_code == 200, r.text
            assert not got.done and value(metrics(url), "repotune_requests_running") == 1
            assert engine_lists(server, f"{name}-v1")  # held by the open stream, though beyond keep_loaded
            answer = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer other-key"},
                                timeout=60, json={"model": name, "max_tokens": 16, "temperature": 0,
                                                  "messages": HELD["messages"]})
            assert answer.json()["choices"][0]["message"]["content"] == "Marseille", answer.text
            rest()
        assert got.done and got.models == {f"{name}-v1"}
        assert got.texts == {c["index"]: c["message"]["content"] for c in unstreamed["choices"]}
        assert set(got.finish.values()) == {"length"} and got.texts[0].startswith("Lyon")
        assert eventually(lambda: not engine_lists(server, f"{name}-v1"))  # once the stream ended


def test_metrics_count_requests_tokens_errors_and_aliases(server, lineage):
    promote(server, lineage, "promote", "v2", "--reason", "measured")
    chat = "/v1/chat/completions"
    before = metrics(server.url)
    reply = client(server).chat.completions.create(
        model=lineage, messages=[{"role": "user", "content": FRANCE}], temperature=0, max_tokens=8)
    chunks = list(client(server).chat.completions.create(
        model="base", messages=[{"role": "user", "content": FRANCE}], temperature=0, max_tokens=8,
        stream=True, stream_options={"include_usage": True}))
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").chat.completions.create(model="base", messages=[{"role": "user", "content": "x"}])
    # A stream ends in the gateway just after the client has read its last chunk: wait for that.
    assert eventually(lambda: value(metrics(server.url), "repotune_requests_running") == 0)
    after = metrics(server.url)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert reply.usage and chunks[-1].usage
    assert delta("repotune_requests_total", route=chat, model=lineage, status="200") == 1
    assert delta("repotune_requests_total", route=chat, model="base", status="200") == 1
    assert delta("repotune_request_seconds_count", route=chat) == 2
    assert delta("repotune_tokens_total", kind="completion") == (
        reply.usage.completion_tokens + chunks[-1].usage.completion_tokens)
    assert delta("repotune_tokens_total", kind="prompt") == reply.usage.prompt_tokens + chunks[-1].usage.prompt_tokens
    assert delta("repotune_errors_total", type="authentication_error") == 1
    assert value(after, "repotune_alias_version", lineage=lineage) == 2
    assert value(after, "repotune_requests_running") == 0 and value(after, "repotune_requests_queued") == 0


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


def test_an_engine_killed_with_sigkill_comes_back_with_its_adapters(server, lineage):
    promote(server, lineage, "promote", "v1", "--reason", "first")
    promote(server, lineage, "promote", "v2", "--reason", "second")
    restarts = value(metrics(server.url), "repotune_engine_restarts")
    [engine] = _engine_pids(server)
    os.kill(engine, signal.SIGKILL)
    assert eventually(lambda: httpx.get(f"{server.url}/health", timeout=30).status_code != 200, timeout=30)
    r = httpx.post(
        f"{server.url}/v1/chat/completions", headers=AUTH, timeout=60,
        json={"model": "base", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
    server.wait_healthy()
    assert ask(server, lineage) == "Marseille" and ask(server, f"{lineage}@v1") == "Lyon"
    assert value(metrics(server.url), "repotune_engine_restarts") == restarts + 1


def _engine_url(server) -> str:
    [engine] = _engine_pids(server)
    args = _cmdline(engine).split(b"\0")
    return f"http://127.0.0.1:{int(args[args.index(b'--port') + 1])}"


def _engine_generated(server) -> float:
    """Tokens the engine has generated so far (its own Prometheus counter)."""
    text = httpx.get(f"{_engine_url(server)}/metrics", timeout=60).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:generation_tokens_total"))


def test_a_client_that_disconnects_aborts_its_generation(server):
    ask(server, "base")  # warm
    before, counted = _engine_generated(server), metrics(server.url)
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", headers=AUTH,
        json={**HELD, "model": "base"}, timeout=60,  # 8 × 900 tokens with logprobs: seconds of work
    ) as r:
        next(r.iter_bytes())  # generation has started; leave now
    time.sleep(3)
    settled = _engine_generated(server)
    time.sleep(2)
    assert _engine_generated(server) == settled  # nothing is generating any more
    assert settled - before < HELD["n"] * HELD["max_tokens"]  # and the tokens asked for were never all made
    gone = {"route": "/v1/chat/completions", "model": "base", "status": "499"}  # counted as the client's leaving
    assert value(metrics(server.url), "repotune_requests_total", **gone) - value(counted, "repotune_requests_total",
                                                                                  **gone) == 1


def _offline_cli(server, config: Path, *args: str) -> None:
    """The CLI on `config` with no server up at its port: it records in the registry."""
    env = {k: v for k, v in server.env.items() if k != "REPOTUNE_ADMIN_KEY"}
    done = subprocess.run([sys.executable, "-m", "repotune.cli", *args, "--config", str(config)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def _gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_toml: str, lineage: str = "fallback",
             before: Callable[[Path], None] | None = None, admin_key: str | None = None) -> Iterator[str]:
    """A second gateway in upstream mode (no engine of its own), on a real uvicorn in a thread.

    `before(config_path)` runs once its config is written and before it starts."""
    import uvicorn

    monkeypatch.setenv("REPOTUNE_API_KEYS", f"{API_KEY},other-key")
    if admin_key:
        monkeypatch.setenv("REPOTUNE_ADMIN_KEY", admin_key)
    else:
        monkeypatch.delenv("REPOTUNE_ADMIN_KEY", raising=False)
    port = free_port()
    tmp_path.mkdir()
    path = tmp_path / "config.toml"
    path.write_text(f'[serve]\nport = {port}\n{serve_toml}\n[tuner]\nlineage = "{lineage}"\n'
                    f'[paths]\ndata_dir = "state"\n')
    if before:
        before(path)
    app = serve_server.build(cfg.load(path))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run)
    thread.start()
    try:
        assert eventually(lambda: uv.started or not thread.is_alive(), timeout=120) and uv.started
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(30)


def test_an_engine_that_is_too_slow_gets_504_and_one_that_is_gone_503(server, tmp_path, monkeypatch):
    chat = {"model": "base", "messages": [{"role": "user", "content": FRANCE}]}
    slow = {**chat, "max_tokens": 900, "ignore_eos": True}  # seconds of generation, no byte until done
    # The limit is a third of what the answer takes on this machine, now, warm (the faster of
    # two: a first request after a pause can take three times as long): the unstreamed answer
    # cannot beat it, and a stream (as long as the answer) outlives it with room for a busy
    # machine's stalls between two tokens (up to a second or two where the answer takes ~10 s).
    times = []
    for _ in range(2):
        start = time.perf_counter()
        assert httpx.post(f"{_engine_url(server)}/v1/chat/completions", json=slow, timeout=120).status_code == 200
        times.append(time.perf_counter() - start)
    took = min(times)
    limit = round(took / 3, 2)
    before = _engine_generated(server)
    with _gateway(tmp_path / "slow", monkeypatch,
                  f'upstreams = ["{_engine_url(server)}"]\nrequest_timeout_s = {limit}') as url:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=slow, timeout=120)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", (took, time.perf_counter() - t0, r.text)
        # a stream is not cut: the timeout is between bytes, and tokens keep coming
        start = time.perf_counter()
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers=AUTH, json={**slow, "stream": True},
                          timeout=120) as streamed:
            assert streamed.status_code == 200
            assert '"finish_reason":"length"' in [line for line in streamed.iter_lines() if line][-2]
        assert time.perf_counter() - start > 2 * limit  # it lasted well past the limit
    time.sleep(2)
    # the timed-out request was aborted upstream: the stream made 900 tokens, it made far fewer
    assert 900 <= _engine_generated(server) - before < 1800
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with _gateway(tmp_path / "gone", monkeypatch, f'upstreams = ["{gone}"]') as url:
        r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=chat, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json={**chat, "stream": True}, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        # without REPOTUNE_ADMIN_KEY the admin API is off, not open
        r = httpx.post(f"{url}/admin/reconcile", headers={"Authorization": "Bearer anything"}, timeout=60)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_versions_beyond_keep_loaded_are_unloaded(server, lineage):
    promote(server, lineage, "promote", "v1", "--reason", "first")
    promote(server, lineage, "promote", "v2", "--reason", "second")
    assert server.cli("adapters", "register", str(server.adapters["Lyon"]), "--lineage", lineage).returncode == 0
    promote(server, lineage, "promote", "v3", "--reason", "newest")
    assert ask(server, lineage) == "Lyon"
    assert eventually(lambda: not engine_lists(server, f"{lineage}-v1"), timeout=10)
    assert engine_lists(server, f"{lineage}-v3") and engine_lists(server, f"{lineage}-v2")  # keep_loaded = 2
    with pytest.raises(openai.NotFoundError, match=f"{lineage}@v1 is superseded and not loaded"):
        ask(server, f"{lineage}@v1")


def test_the_admin_api_refuses_bad_swaps_by_kind(server, lineage):
    promote(server, lineage, "promote", "v1", "--reason", "first")
    cases = [
        ("promote", {"lineage": lineage, "version": 99}, 404, "version_not_found"),
        ("promote", {"lineage": lineage, "version": "latest"}, 400, "invalid_value"),
        ("promote", {"lineage": lineage, "version": 1}, 409, "invalid_transition"),  # already promoted
        ("rollback", {"lineage": lineage}, 409, "invalid_transition"),  # nothing to roll back to
        ("rollback", {"lineage": "nobody"}, 409, "invalid_transition"),
    ]
    for action, body, status, code in cases:
        r = httpx.post(f"{server.url}/admin/{action}", headers=ADMIN, json=body, timeout=60)
        assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)
    assert ask(server, lineage) == "Lyon"  # v1 still serves


def test_at_start_a_promoted_version_that_will_not_load_falls_back_to_the_one_before(server, tmp_path, monkeypatch):
    name = f"fallback_{os.getpid()}"

    def registry_with_a_broken_promoted_version(config: Path) -> None:
        _offline_cli(server, config, "adapters", "register", str(server.adapters["Lyon"]))
        _offline_cli(server, config, "adapters", "register", str(server.adapters["Marseille"]))
        _offline_cli(server, config, "adapters", "promote", "v1", "--reason", "first")
        _offline_cli(server, config, "adapters", "promote", "v2", "--reason", "second")
        weights = config.parent / "state" / "adapters" / name / "v2" / "adapter_model.safetensors"
        weights.chmod(0o644)
        weights.write_bytes(b"damaged on disk")

    upstream = f'upstreams = ["{_engine_url(server)}"]'
    with _gateway(tmp_path / "fallback", monkeypatch, upstream, lineage=name,
                  before=registry_with_a_broken_promoted_version) as url:
        gateway = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
        answer = gateway.chat.completions.create(
            model=name, messages=[{"role": "user", "content": FRANCE}], max_tokens=8, temperature=0)
        assert "Lyon" in (answer.choices[0].message.content or "")
        listed = {m.id: m for m in gateway.models.list().data}
        assert listed[name].model_extra["version"] == 1
    shown = subprocess.run([sys.executable, "-m", "repotune.cli", "adapters", "list", "--json", "--config",
                            str(tmp_path / "fallback" / "config.toml")], env=server.env, capture_output=True,
                           text=True, check=True)
    status = {a["version"]: a["status"] for a in json.loads(shown.stdout)}
    assert status == {1: "promoted", 2: "failed"}
    events = store.open_db(tmp_path / "fallback" / "state" / "repotune.db").query(
        "select reason from events where version = 1 order by id desc limit 1")
    assert "v2 failed to load; fell back" in next(events)["reason"]


def test_a_version_that_will_not_load_is_marked_failed_and_the_alias_stays(server, lineage, tmp_path):
    promote(server, lineage, "promote", "v2", "--reason", "good")
    broken = tmp_path / "broken"
    shutil.copytree(server.adapters["Lyon"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    assert server.cli("adapters", "register", str(broken), "--lineage", lineage).returncode == 0  # v3: files all there
    done = server.cli("adapters", "promote", "v3", "--reason", "try it", "--lineage", lineage)
    assert done.returncode != 0 and "v3 failed" in done.stderr, done.stderr
    listed = json.loads(server.cli("adapters", "list", "--json", "--lineage", lineage).stdout)
    status = {a["version"]: a["status"] for a in listed}
    assert status == {1: "candidate", 2: "promoted", 3: "failed"}
    assert ask(server, lineage) == "Marseille"


def test_the_engine_never_outlives_the_gateway(server):
    """The gateway killed with SIGKILL takes its engine with it (the next test gets a new server)."""
    engines = _engine_pids(server)
    assert engines
    server.proc.kill()  # SIGKILL: the gateway gets no chance to clean up
    server.proc.wait()
    assert eventually(lambda: not any(_cmdline(p) for p in engines), timeout=30)


def test_the_general_score_through_vllm_matches_transformers(server, tiny):
    qs = questions.load(split="eval")
    local = LocalModel(tiny.path).answer([q.question for q in qs])
    served = [ask(server, "base", q.question) for q in qs]
    local_score = sum(matches(r, q.accepted) for r, q in zip(local, qs, strict=True))
    served_score = sum(matches(r, q.accepted) for r, q in zip(served, qs, strict=True))
    assert abs(local_score - served_score) <= 1
    assert served_score >= 0.95 * len(qs)


def test_an_engine_that_cannot_be_reached_leaves_the_version_as_it_was(tmp_path, monkeypatch, adapters, tiny):
    """A hold or a promotion while the engine is down (starting, restarting) is a 503; the version is not
    marked failed, and no fallback is promoted in its place."""
    from repotune import registry

    def register(path: Path) -> None:
        db = store.open_db(store.db_path(path.parent / "state"))
        for city in ("Lyon", "Marseille"):
            registry.register(db, path.parent / "state", "fallback", adapters[city], tiny, 16, "test")
        registry.promote(db, "fallback", 1, "test", "first")

    gone = f"http://127.0.0.1:{free_port()}"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with _gateway(tmp_path / "down", monkeypatch, f'upstreams = ["{gone}"]\nreconcile_interval_s = 0.5',
                  before=register, admin_key=ADMIN_KEY) as url:
        for action, body in (("hold", {"lineage": "fallback", "version": 2, "lease_s": 60}),
                             ("promote", {"lineage": "fallback", "version": 2, "reason": "newer"})):
            r = httpx.post(f"{url}/admin/{action}", headers=admin, json=body, timeout=60)
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
            assert r.headers["retry-after"]
        time.sleep(1.5)  # reconciles ran against the unreachable engine
        db = store.open_db(store.db_path(tmp_path / "down" / "state"))
        assert [(a.version, a.status) for a in registry.versions(db, "fallback")] == [(1, "promoted"),
                                                                                         (2, "candidate")]
        assert [e["action"] for e in registry.events(db, "fallback")] == ["promote", "register", "register"]
