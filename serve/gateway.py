"""The gateway: an OpenAI-compatible API in front of vLLM, owning what a proxy must.

vLLM serves the tokens; the gateway owns API keys and the admin key, the lineage aliases
and pinned versions, swaps, limits, errors in OpenAI's shape, and health. Requests are
checked (JSON object, known parameters, a model that exists) before they reach the
engine; the model name is rewritten to the engine name of the version it means; streamed
responses are passed through chunk by chunk as bytes, and a client that goes away closes
the upstream stream, which aborts its generation in the engine. vLLM's own adapter
load/unload endpoints are never exposed: only the routes below exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from repotune import registry
from serve import errors
from serve.adapters import AdapterManager, SwapError
from serve.errors import APIError
from serve.limits import KeyLimits
from serve.metrics import Metrics

log = logging.getLogger("repotune.gateway")

# Parameters the engine accepts for each endpoint; anything else is refused by name.
COMMON = {
    "model", "max_tokens", "stop", "n", "temperature", "top_p", "seed", "stream", "stream_options",
    "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "user", "response_format", "top_k",
    "min_p", "repetition_penalty", "min_tokens", "ignore_eos",
}
CHAT_PARAMS = COMMON | {
    "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
}
COMPLETION_PARAMS = COMMON | {"prompt", "echo", "suffix", "best_of"}


@dataclass
class GatewayState:
    manager: AdapterManager
    api_keys: tuple[str, ...]
    admin_key: str | None
    auth: bool = True
    max_body_bytes: int = 1 << 20
    ready: Callable[[], bool] = lambda: True
    startup: Callable[[], Awaitable[None]] | None = None
    shutdown: Callable[[], Awaitable[None]] | None = None
    reconcile_interval_s: float = 5.0
    request_timeout_s: float = 600.0
    limits: KeyLimits = field(default_factory=lambda: KeyLimits(max_concurrent=64, max_queued=256))
    # The request path talks to the engine through aiohttp: per request it costs a few
    # times less CPU than httpx, and on a small machine that CPU is taken from the engine.
    session: aiohttp.ClientSession | None = None
    metrics: Metrics = field(default_factory=Metrics)
    engine_restarts: Callable[[], int] = lambda: 0
    _upstream_cycle: Any = field(default=None)

    def upstream(self) -> str:
        if self._upstream_cycle is None:
            self._upstream_cycle = itertools.cycle(self.manager.upstreams)
        return str(next(self._upstream_cycle))


def create_app(state: GatewayState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.session = aiohttp.ClientSession(
            # Idle connections go before vLLM (uvicorn, 5 s keep-alive) closes them: reusing one the
            # engine is closing at that instant fails the request with ServerDisconnectedError.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=state.request_timeout_s),
            auto_decompress=False,
        )
        if state.startup:
            await state.startup()
        poll = asyncio.create_task(_poll(state))
        try:
            yield
        finally:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            if state.shutdown:
                await state.shutdown()
            await state.session.close()

    app = FastAPI(title="repotune", lifespan=lifespan, docs_url=None, redoc_url=None)
    errors.install(app, on_error=lambda status: state.metrics.errors.labels(errors.TYPES[status]).inc())
    app.state.gateway = state

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = state.ready()
        return JSONResponse({"status": "ok" if ok else "starting"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.engine_restarts.set(state.engine_restarts())
        state.metrics.running.set(state.limits.running)
        state.metrics.queued.set(state.limits.queued)
        for lineage, adapter in state.manager.aliases.items():
            state.metrics.alias_version.labels(lineage).set(adapter.version)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        _client_auth(state, request)
        base = {"id": "base", "object": "model", "created": 0, "owned_by": "repotune",
                "base_model": state.manager.base_model}
        return JSONResponse({"object": "list", "data": [base, *state.manager.models()]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _complete(state, request, "/v1/chat/completions", CHAT_PARAMS)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(state, request, "/v1/completions", COMPLETION_PARAMS)

    @app.post("/admin/reconcile")
    async def admin_reconcile(request: Request) -> JSONResponse:
        _admin_auth(state, request)
        await state.manager.reconcile(actor="admin")
        return JSONResponse({"aliases": {k: v.version for k, v in state.manager.aliases.items()}})

    @app.post("/admin/promote")
    async def admin_promote(request: Request) -> JSONResponse:
        _admin_auth(state, request)
        body = await _json_object(request, state)
        return await _admin_swap(state, body, lambda lineage: _version(body.get("version"), "version"))

    @app.post("/admin/rollback")
    async def admin_rollback(request: Request) -> JSONResponse:
        _admin_auth(state, request)
        body = await _json_object(request, state)
        to = body.get("to")

        def target(lineage: str) -> int:
            version = _version(to, "to") if to else None
            return registry.rollback_target(state.manager.db(), lineage, version).version

        return await _admin_swap(state, {"reason": "rollback", **body}, target)

    return app


def _version(value: Any, param: str) -> int:
    try:
        return registry.parse_version(value if isinstance(value, int | str) else "")
    except registry.RegistryError as e:
        raise APIError(400, str(e), "invalid_value", param) from None


async def _admin_swap(state: GatewayState, body: dict[str, Any], version: Callable[[str], int]) -> JSONResponse:
    """Promote `version(lineage)` through the manager: load, smoke, then record; errors by kind."""
    lineage = str(body.get("lineage", ""))
    try:
        adapter = await state.manager.promote(
            lineage, version(lineage), str(body.get("actor", "admin")), str(body.get("reason") or "")
        )
    except registry.NotFound as e:
        raise APIError(404, str(e), "version_not_found") from e
    except registry.RegistryError as e:
        raise APIError(409, str(e), "invalid_transition") from e
    except SwapError as e:
        raise APIError(409, str(e), "swap_failed") from e
    return JSONResponse({"lineage": adapter.lineage, "version": adapter.version, "status": adapter.status})


async def _poll(state: GatewayState) -> None:
    """Reconcile with the registry on a short poll (another gateway or the CLI may change it)."""
    while True:
        await asyncio.sleep(state.reconcile_interval_s)
        if not state.ready():
            continue
        try:
            await state.manager.reconcile()
        except Exception:
            log.exception("reconcile failed")


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _client_auth(state: GatewayState, request: Request) -> str:
    """The caller's API key (checked), or "anonymous" when auth is off."""
    if not state.auth:
        return "anonymous"
    token = _bearer(request)
    # Compare against every key, in constant time, so timing tells nothing about which.
    if not token or not any([hmac.compare_digest(token.encode(), k.encode()) for k in state.api_keys]):
        message = "missing API key: send 'Authorization: Bearer <key>'" if not token else "invalid API key"
        raise APIError(401, message, "invalid_api_key")
    return token


def _admin_auth(state: GatewayState, request: Request) -> None:
    token = _bearer(request)
    if not state.admin_key:
        raise APIError(403, "the admin API is disabled: set REPOTUNE_ADMIN_KEY", "admin_disabled")
    if not token or not hmac.compare_digest(token.encode(), state.admin_key.encode()):
        raise APIError(401, "invalid admin key", "invalid_api_key")


async def _json_object(request: Request, state: GatewayState) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > state.max_body_bytes:
        raise APIError(413, f"request body over {state.max_body_bytes} bytes", "request_too_large")
    raw = await request.body()
    if len(raw) > state.max_body_bytes:
        raise APIError(413, f"request body over {state.max_body_bytes} bytes", "request_too_large")
    try:
        body = json.loads(raw)
    except ValueError:
        raise APIError(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_request")
    return body


def _check_params(body: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in body:
        if key not in allowed:
            raise APIError(400, f"unsupported parameter: {key!r}", "unsupported_parameter", key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required and must be a string", "invalid_value", "model")
    if path.endswith("chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' must be a non-empty array", "invalid_value", "messages")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise APIError(400, "each message must be an object with a 'role'", "invalid_value", "messages")
    elif "prompt" not in body:
        raise APIError(400, "'prompt' is required", "invalid_value", "prompt")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise APIError(400, "'stream' must be a boolean", "invalid_type", "stream")


async def _complete(state: GatewayState, request: Request, path: str, allowed: set[str]) -> Response:
    key = _client_auth(state, request)
    body = await _json_object(request, state)
    _check_params(body, allowed, path)
    if not state.ready():
        raise APIError(503, "the engine is starting or restarting; retry shortly", "engine_unavailable",
                       headers={"Retry-After": "5"})
    asked = body["model"]
    try:
        route = state.manager.route(asked)
    except (KeyError, registry.RegistryError):
        raise APIError(404, state.manager.missing(str(asked)), "model_not_found", "model") from None
    body["model"] = route.engine_name
    url = state.upstream() + path
    payload = json.dumps(body).encode()
    done = _Done(state, path, asked)
    try:
        await done.held.enter_async_context(state.limits.slot(key))  # 429 when the key is over its limit
        await done.held.enter_async_context(state.manager.lease(route.engine_name))
        if body.get("stream"):
            return await _stream(state, url, payload, done)
        with _engine_errors():
            async with _session(state).post(url, data=payload, headers=_JSON) as r:
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
    return Response(json.dumps(_drop_nulls(data), separators=(",", ":")).encode(), media_type="application/json")


_JSON = {"Content-Type": "application/json"}


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
    """Releases a request's concurrency slot and version lease, and records its metrics, once."""

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
        await self.held.aclose()
        if status is not None:
            self.state.metrics.requests.labels(self.path, self.model, str(status)).inc()
            self.state.metrics.latency.labels(self.path).observe(time.perf_counter() - self.start)


async def _stream(state: GatewayState, url: str, payload: bytes, done: _Done) -> Response:
    with _engine_errors():
        upstream = await _session(state).post(url, data=payload, headers=_JSON)
    if upstream.status != 200:
        content = await upstream.read()
        upstream.release()
        await done.finish(upstream.status)
        return _engine_error(state, upstream.status, content)

    async def relay() -> AsyncIterator[bytes]:
        status = 200
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk  # as bytes: conforming chunks are not decoded and re-encoded
                if b'"usage"' in chunk:
                    state.metrics.count_usage(chunk)
            upstream.release()  # finished: the connection goes back to the pool
        except BaseException:
            status = 499  # the client went away (or the engine did) mid-stream
            raise
        finally:
            upstream.close()  # unfinished: closing the connection aborts the generation upstream
            await done.finish(status)

    return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


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

