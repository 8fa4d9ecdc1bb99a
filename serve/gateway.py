"""The gateway: an OpenAI-compatible API in front of vLLM, owning what a proxy must.

vLLM serves the tokens; the gateway owns API keys and the admin key (`serve.auth`), the
lineage aliases and pinned versions, swaps, limits, errors in OpenAI's shape, and health.
`create_app` puts the pieces together: the OpenAI routes (`serve.openai_api`), the admin
routes (`serve.admin_api`), `/health` and `/metrics`, one error handler for all of them
(`serve.errors`), the engine session, and the poll that reconciles with the registry.
Each route reads the shared `GatewayState` from `app.state.gateway`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from repotune import cycles
from serve import admin_api, errors, hooks, openai_api
from serve.adapters import AdapterManager
from serve.hooks import Hooks
from serve.limits import KeyLimits
from serve.metrics import Metrics
from serve.policy import Policy

log = logging.getLogger("repotune.gateway")


@dataclass
class GatewayState:
    manager: AdapterManager
    api_keys: tuple[str, ...]
    admin_key: str | None
    auth: bool = True
    max_body_bytes: int = 1 << 20
    max_n: int = 8
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
    policy: Policy = field(default_factory=lambda: Policy("off", "", 1.0))
    hooks: Hooks | None = None  # the GitHub webhook's store and secret; None: the route answers 403
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
        # the domain index (read, or built once from the store) beside the engine's start; both
        # before the first request, which is never answered unscored
        await asyncio.gather(asyncio.to_thread(state.policy.load), state.startup() if state.startup else _nothing())
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
            await state.manager.close()

    app = FastAPI(title="repotune", lifespan=lifespan, docs_url=None, redoc_url=None)
    errors.install(app, on_error=lambda status: state.metrics.errors.labels(errors.TYPES[status]).inc())
    app.state.gateway = state
    app.include_router(openai_api.router)
    app.include_router(admin_api.router)
    app.include_router(hooks.router)

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
        state.metrics.set_cycles(await state.manager.store(cycles.health))  # the registry's own connection
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


async def _nothing() -> None:
    return None


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
