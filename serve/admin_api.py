"""The admin routes: promote, roll back and reconcile on the live server; hold a version
for evaluation (loaded, smoke-tested, not promoted, addressable by the admin key alone)
and release it.

Each needs the admin key (`serve.auth.admin`). A swap goes through the adapter manager
(load into every engine, one smoke request, then the registry flip), so the alias has
moved when the route answers; the CLI, the eval gate and the nightly cycle reach these
routes through `repotune.promotion`. Errors come back by kind: 404 for a version that
does not exist, 409 for a transition the registry refuses or a swap that failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from repotune import registry
from serve import checks
from serve.adapters import EngineUnavailable, SwapError
from serve.auth import admin
from serve.errors import APIError

if TYPE_CHECKING:
    from serve.gateway import GatewayState

router = APIRouter(prefix="/admin", dependencies=[Depends(admin)])


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


@router.post("/reconcile")
async def reconcile(request: Request) -> JSONResponse:
    manager = _state(request).manager
    await manager.reconcile(actor="admin")
    return JSONResponse({"aliases": {k: v.version for k, v in manager.aliases.items()}})


@router.post("/promote")
async def promote(request: Request) -> JSONResponse:
    state = _state(request)
    body = await checks.json_body(request, state.max_body_bytes)

    async def version(lineage: str) -> int:
        return _version(body.get("version"), "version")

    return await _swap(state, body, version)


@router.post("/rollback")
async def rollback(request: Request) -> JSONResponse:
    state = _state(request)
    body = await checks.json_body(request, state.max_body_bytes)
    to = body.get("to")

    async def target(lineage: str) -> int:
        version = _version(to, "to") if to else None
        adapter = await state.manager.store(registry.rollback_target, lineage, version)
        return adapter.version

    return await _swap(state, {"reason": "rollback", **body}, target)


@router.post("/hold")
async def hold(request: Request) -> JSONResponse:
    """Load a version for evaluation without promoting it, for `lease_s` seconds (default 3600)."""
    state = _state(request)
    body = await checks.json_body(request, state.max_body_bytes)
    lineage, version = str(body.get("lineage", "")), _version(body.get("version"), "version")
    lease = body.get("lease_s", 3600)
    if not isinstance(lease, int | float) or isinstance(lease, bool) or not 0 < lease <= 86400:
        raise APIError(400, "'lease_s' must be a number of seconds in (0, 86400]", "invalid_value", "lease_s")
    try:
        adapter = await state.manager.hold(lineage, version, float(lease), str(body.get("actor", "admin")))
    except registry.NotFound as e:
        raise APIError(404, str(e), "version_not_found") from e
    except EngineUnavailable as e:
        raise APIError(503, str(e), "engine_unavailable", headers={"Retry-After": "5"}) from e
    except (registry.RegistryError, SwapError) as e:
        raise APIError(409, str(e), "hold_failed") from e
    return JSONResponse({"model": f"{adapter.lineage}@v{adapter.version}", "lineage": adapter.lineage,
                         "version": adapter.version, "status": adapter.status, "lease_s": lease})


@router.post("/release")
async def release(request: Request) -> JSONResponse:
    """End a hold: the version is unloaded unless it is served anyway."""
    state = _state(request)
    body = await checks.json_body(request, state.max_body_bytes)
    lineage, version = str(body.get("lineage", "")), _version(body.get("version"), "version")
    return JSONResponse({"lineage": lineage, "version": version,
                         "released": await state.manager.release(lineage, version)})


@router.post("/policy/reload")
async def reload_policy(request: Request) -> JSONResponse:
    """Read the domain index again (ingest and data build rebuild it, then call this)."""
    policy = _state(request).policy
    index = await asyncio.to_thread(policy.load)
    return JSONResponse({"mode": policy.mode, "index": index.hash if index else None,
                         "documents": index.documents if index else 0, "threshold": policy.threshold,
                         "threshold_from": policy.threshold_from})


def _version(value: Any, param: str) -> int:
    try:
        return registry.parse_version(value if isinstance(value, int | str) else "")
    except registry.RegistryError as e:
        raise APIError(400, str(e), "invalid_value", param) from None


async def _swap(state: GatewayState, body: dict[str, Any], version: Callable[[str], Awaitable[int]]) -> JSONResponse:
    """Promote `version(lineage)` through the manager: load, smoke, then record; errors by kind."""
    lineage = str(body.get("lineage", ""))
    try:
        adapter = await state.manager.promote(
            lineage, await version(lineage), str(body.get("actor", "admin")), str(body.get("reason") or "")
        )
    except registry.NotFound as e:
        raise APIError(404, str(e), "version_not_found") from e
    except registry.RegistryError as e:
        raise APIError(409, str(e), "invalid_transition") from e
    except EngineUnavailable as e:
        raise APIError(503, str(e), "engine_unavailable", headers={"Retry-After": "5"}) from e
    except SwapError as e:
        raise APIError(409, str(e), "swap_failed") from e
    return JSONResponse({"lineage": adapter.lineage, "version": adapter.version, "status": adapter.status})
