"""Putting the server together from the config: base model, engine or upstreams, gateway.

`build` resolves the base model (its fingerprint decides which adapters may be loaded),
starts the supervised engine unless `serve.upstreams` names running ones, and returns
the FastAPI app; `run` serves it with uvicorn. The gateway starts answering at once —
503 with Retry-After until the engine is healthy — so a slow engine start never looks
like a dead server.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from repotune import db as store
from repotune import models
from repotune.config import Settings
from serve.adapters import AdapterManager
from serve.engine import Supervisor, engine_command, engine_env, free_port
from serve.gateway import GatewayState, create_app
from serve.hooks import Hooks
from serve.limits import KeyLimits
from serve.policy import Policy

log = logging.getLogger("repotune.serve")


class ServeError(Exception):
    """The server cannot start as configured."""


def build(settings: Settings) -> Any:
    serve = settings.config.serve
    if serve.auth and not settings.secrets.api_keys:
        raise ServeError(
            "no API keys: set REPOTUNE_API_KEYS (comma-separated), or serve.auth = false to serve without keys"
        )
    base = models.resolve(settings.config.model.base)
    store.open_db(store.db_path(settings.data_dir))  # create and migrate before serving
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(serve.request_timeout_s, connect=5.0),
        # below vLLM's 5 s keep-alive, like the request path's pool (see gateway.create_app)
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=4),
    )
    supervisor: Supervisor | None = None
    if serve.upstreams:
        upstreams = [u.rstrip("/").removesuffix("/v1") for u in serve.upstreams]
    else:
        port = free_port()
        upstreams = [f"http://127.0.0.1:{port}"]
    manager = AdapterManager(
        db_path=store.db_path(settings.data_dir),
        upstreams=upstreams,
        client=client,
        base_fingerprint=base.fingerprint,
        base_model=base.spec,
        keep_loaded=serve.keep_loaded,
    )
    if not serve.upstreams:

        async def engine_ready() -> None:
            manager.loaded.clear()  # a new engine process holds no adapters
            await manager.reconcile(actor="gateway")
            await manager.restore_held()

        supervisor = Supervisor(
            command=engine_command(serve, base.path, port),
            env=engine_env(serve),
            log_path=settings.data_dir / "logs" / "engine.log",
            url=upstreams[0],
            on_ready=engine_ready,
            start_timeout_s=serve.engine_start_timeout_s,
        )

    async def startup() -> None:
        if not serve.auth:
            log.warning("serve.auth = false: the API answers anyone who can reach %s:%s", serve.host, serve.port)
        if supervisor:
            await supervisor.start()
        else:
            await manager.reconcile(actor="gateway")

    async def shutdown() -> None:
        if supervisor:
            await supervisor.stop()
        await client.aclose()

    state = GatewayState(
        manager=manager,
        api_keys=settings.secrets.api_keys,
        admin_key=settings.secrets.admin_key,
        auth=serve.auth,
        max_body_bytes=serve.max_body_bytes,
        max_n=serve.max_n,
        ready=(lambda: supervisor.ready.is_set()) if supervisor else (lambda: True),
        startup=startup,
        shutdown=shutdown,
        reconcile_interval_s=serve.reconcile_interval_s,
        request_timeout_s=serve.request_timeout_s,
        limits=KeyLimits(serve.max_concurrent_per_key, serve.max_queued_per_key),
        engine_restarts=(lambda: supervisor.restarts) if supervisor else (lambda: 0),
        policy=Policy(settings.config.policy.mode, settings.config.policy.refusal, settings.config.policy.threshold,
                      settings.data_dir, settings.lineage, tuple(settings.config.policy.index_skip),
                      settings.config.policy.log_text, settings.config.policy.score_parts),
        hooks=Hooks(settings.data_dir, settings.secrets.webhook_secret, settings.config.schedule.branch),
    )
    app = create_app(state)
    app.state.supervisor = supervisor
    return app


def run(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    app = build(settings)
    uvicorn.run(
        app,
        host=host or settings.config.serve.host,
        port=port or settings.config.serve.port,
        log_level="info",
        timeout_graceful_shutdown=30,
        access_log=False,  # /metrics counts requests; a log line each costs the engine CPU
    )
