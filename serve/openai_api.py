"""The OpenAI routes: `/v1/models`, `/v1/chat/completions`, `/v1/completions`.

A request is checked (key, body, parameters, a model that exists) before it reaches the
engine; its model name is rewritten to the engine name of the version it means; it holds
its key's units (`serve.limits`) and a lease on that version for as long as it runs.
Streamed responses are passed through chunk by chunk as bytes, and a client that goes
away closes the upstream stream, which aborts its generation in the engine. The engine's
own adapter load/unload endpoints are not routes here, so they cannot be reached.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import aiohttp
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from repotune import registry
from serve import checks, errors, policy
from serve.auth import client_key, is_admin
from serve.engine import BASE_NAME
from serve.errors import APIError

if TYPE_CHECKING:
    from serve.gateway import GatewayState

router = APIRouter()
ClientKey = Annotated[str, Depends(client_key)]


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


@router.get("/v1/models")
async def list_models(request: Request, key: ClientKey) -> JSONResponse:
    manager = _state(request).manager
    base = {"id": "base", "object": "model", "created": 0, "owned_by": "repotune", "base_model": manager.base_model,
            "base_fingerprint": manager.base_fingerprint}
    return JSONResponse({"object": "list", "data": [base, *manager.models()]})


@router.post("/v1/chat/completions")
async def chat(request: Request, key: ClientKey) -> Response:
    return await _complete(_state(request), request, key, "/v1/chat/completions")


@router.post("/v1/completions")
async def completions(request: Request, key: ClientKey) -> Response:
    return await _complete(_state(request), request, key, "/v1/completions")


async def _complete(state: GatewayState, request: Request, key: str, path: str) -> Response:
    body = await checks.json_body(request, state.max_body_bytes)
    cost = checks.check(body, chat=path.endswith("chat/completions"), max_n=state.max_n)
    if not state.ready():
        raise APIError(503, "the engine is starting or restarting; retry shortly", "engine_unavailable",
                       headers={"Retry-After": "5"})
    asked = body["model"]
    admin = is_admin(request)
    try:
        route = state.manager.route(asked, admin=admin)
    except (KeyError, registry.RegistryError):
        raise APIError(404, await state.manager.missing(str(asked)), "model_not_found", "model") from None
    if state.policy.active and not admin:
        decision = state.policy.check(body)
        state.metrics.policy.labels("allowed" if decision.allowed else "refused", decision.reason).inc()
        if not decision.allowed:
            return await _refuse(state, body, str(asked), path)
    check = state.policy.checks_replies and not admin  # the model's own refusal, cut to exactly the text
    body["model"] = route.engine_name
    url = state.upstream() + path
    payload = json.dumps(body).encode()
    done = _Done(state, path, asked)
    try:
        await done.held.enter_async_context(state.limits.slot(key, cost))  # 429 when the key is over its limit
        await done.held.enter_async_context(state.manager.lease(route.engine_name))
        if body.get("stream"):
            replies = policy.Replies(state.policy.refusal, path.endswith("chat/completions")) if check else None
            return await _stream(state, url, payload, done, replies)
        with _engine_errors():
            # An unstreamed answer sends no byte before it is whole, so the limit between bytes is
            # its limit in total; said so outright, since aiohttp's between-bytes timer (sock_read)
            # was seen to let a 4.5 s answer through a 1.5 s limit about one time in five.
            whole = aiohttp.ClientTimeout(total=state.request_timeout_s, sock_connect=30)
            async with _session(state).post(url, data=payload, headers=_JSON, timeout=whole) as r:
                status, content = r.status, await r.read()
    except BaseException:
        await done.finish(None)
        raise
    await done.finish(status)
    if status != 200:
        return _engine_error(state, status, content)
    try:
        data = json.loads(content)
    except ValueError:
        return Response(content, media_type="application/json")
    state.metrics.add_usage(data.get("usage") if isinstance(data, dict) else None)
    cut = check and isinstance(data, dict) and policy.cut_reply(data, state.policy.refusal,
                                                                path.endswith("chat/completions"))
    if check:
        _count_reply(state, bool(cut))
    return Response(json.dumps(_drop_nulls(data), separators=(",", ":")).encode(), media_type="application/json",
                    headers=REFUSED if cut else None)


def _count_reply(state: GatewayState, cut: bool) -> None:
    """One reply through the output check (policy modes model and both), in /metrics."""
    state.metrics.policy.labels("refused" if cut else "allowed", "model_refused" if cut else "model_answered").inc()


_JSON = {"Content-Type": "application/json"}
REFUSED = {"X-Repotune-Policy": "refused"}


async def _refuse(state: GatewayState, body: dict[str, Any], model: str, path: str) -> Response:
    """The policy's refusal as an ordinary completion, streamed or not: its content exactly the
    refusal text, `finish_reason` "stop", usage counted in the base's tokens (the engine's
    tokenizer, which generates nothing), and the `X-Repotune-Policy: refused` header."""
    done = _Done(state, path, model)
    chat = path.endswith("chat/completions")
    text, n = state.policy.refusal, int(body.get("n") or 1)
    try:
        total = await _refusal_usage(state, body, chat, n)
    except BaseException:
        await done.finish(None)
        raise
    created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-refused-{uuid.uuid4().hex}"
    state.metrics.add_usage(total)
    await done.finish(200)
    if not body.get("stream"):
        choices = [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None, "finish_reason": "stop"} if chat else
                   {"index": i, "text": text, "logprobs": None, "finish_reason": "stop"} for i in range(n)]
        data = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model, "choices": choices, "usage": total}
        return JSONResponse(data, headers=REFUSED)
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices, **extra}
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    def events() -> Iterator[bytes]:
        for i in range(n):
            if chat:
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
                yield chunk([{"index": i, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
            else:
                yield chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            yield chunk([], usage=total)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", **REFUSED})


async def _refusal_usage(state: GatewayState, body: dict[str, Any], chat: bool, n: int) -> dict[str, int]:
    """The usage of a refusal of `n` choices, counted by the engine's `/tokenize` (the chat template
    applied, as a generation would count them)."""
    rules = state.policy
    if rules.refusal_tokens is None:
        rules.refusal_tokens = await _count(state, {"prompt": rules.refusal, "add_special_tokens": False})
    if chat:
        asked = {"messages": body["messages"], "add_generation_prompt": True}
    else:
        prompt = body.get("prompt")
        asked = {"prompt": " ".join(p for p in prompt if isinstance(p, str)) if isinstance(prompt, list) else prompt}
    prompt_tokens = await _count(state, asked)
    completion_tokens = rules.refusal_tokens * n
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _count(state: GatewayState, payload: dict[str, Any]) -> int:
    with _engine_errors():
        async with _session(state).post(state.upstream() + "/tokenize", data=json.dumps({"model": BASE_NAME,
                                        **payload}).encode(), headers=_JSON) as r:
            if r.status != 200:
                raise APIError(r.status if r.status < 500 else 502,
                               f"the engine could not count the request's tokens: {(await r.text())[:300]}",
                               "engine_error")
            count: int = (await r.json())["count"]
            return count


def _session(state: GatewayState) -> aiohttp.ClientSession:
    assert state.session is not None, "the gateway is not started"
    return state.session


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """The engine not answering in time is a 504; not answering at all, a 503."""
    try:
        yield
    except TimeoutError as e:
        raise APIError(504, "the engine did not answer in time", "timeout") from e
    except aiohttp.ClientError as e:
        raise APIError(503, f"the engine is unavailable: {type(e).__name__}", "engine_unavailable") from e


def _engine_error(state: GatewayState, status: int, content: bytes) -> Response:
    """An error the engine answered with, counted and reshaped to OpenAI's body."""
    state.metrics.errors.labels(errors.TYPES[status]).inc()
    return errors.from_engine(status, _safe_json_bytes(content))


@dataclass
class _Done:
    """Releases a request's units and version lease, and records its metrics, once."""

    state: GatewayState
    path: str
    model: str
    start: float = field(default_factory=time.perf_counter)
    held: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    finished: bool = False

    async def finish(self, status: int | None) -> None:
        if self.finished:
            return
        self.finished = True
        if status is not None:  # counted before its units are freed: a request seen as ended is counted
            self.state.metrics.requests.labels(self.path, self.model, str(status)).inc()
            self.state.metrics.latency.labels(self.path).observe(time.perf_counter() - self.start)
        await self.held.aclose()


async def _stream(state: GatewayState, url: str, payload: bytes, done: _Done,
                  replies: policy.Replies | None = None) -> Response:
    with _engine_errors():
        upstream = await _session(state).post(url, data=payload, headers=_JSON)
    if upstream.status != 200:
        content = await upstream.read()
        upstream.release()
        await done.finish(upstream.status)
        return _engine_error(state, upstream.status, content)

    async def relay() -> AsyncIterator[bytes]:
        tail, ended = b"", False  # the stream's last bytes: `[DONE]` is seen even when a read splits it
        try:
            async for chunk in upstream.content.iter_any():
                if b'"usage"' in chunk:
                    state.metrics.count_usage(chunk)
                tail = (tail + chunk[-64:])[-64:]  # never a copy of a whole chunk
                ended = ended or b"data: [DONE]" in tail
                if replies is None:
                    yield chunk  # as bytes: conforming chunks are not decoded and re-encoded
                elif sent := replies.feed(chunk):
                    yield sent
            ended = True
            if replies is not None and (rest := replies.close()):
                yield rest
            upstream.release()  # finished: the connection goes back to the pool
        finally:
            # A client may close as soon as it has read `[DONE]`, which cancels this generator at
            # that `yield`: a reply whose end was sent is a 200 and its policy decision is counted,
            # however the sending ended. Otherwise the client (or the engine) went away mid-stream.
            if replies is not None and ended:
                _count_reply(state, replies.cut > 0)
            upstream.close()  # unfinished: closing the connection aborts the generation upstream
            await done.finish(200 if ended else 499)

    return _ClosingStream(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class _ClosingStream(StreamingResponse):
    """A streaming response that closes its body when it ends, however it ends.

    When the client goes away, Starlette cancels the response; if that lands while the body
    generator is suspended at its `yield` (the gateway sending a chunk), the generator is not
    closed but left to the garbage collector, and with it the upstream connection: the
    engine would go on generating for no one until a collection happened to run. Closing it
    here runs the relay's `finally` at once, which aborts the generation.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


# Fields the OpenAI spec requires even when null; other nulls are vLLM extras and go.
_KEEP_NULL = frozenset({"content", "refusal", "logprobs", "finish_reason"})


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None or k in _KEEP_NULL}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _safe_json_bytes(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return {"message": content.decode(errors="replace")[:500]}
