"""API keys and the admin key, as FastAPI dependencies of the routes that need them.

Client routes depend on `client_key` (one of `REPOTUNE_API_KEYS`, or "anonymous" with
`serve.auth = false`); admin routes on `admin` (`REPOTUNE_ADMIN_KEY`; unset, the admin
API is off — 403 — rather than open). Keys are compared in constant time against every
configured key, so timing tells nothing about which one nearly matched.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from serve.errors import APIError


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _same(token: str, key: str) -> bool:
    return hmac.compare_digest(token.encode(), key.encode())


async def client_key(request: Request) -> str:
    """The caller's API key (checked), or "anonymous" when auth is off."""
    state = request.app.state.gateway
    if not state.auth:
        return "anonymous"
    token = _bearer(request)
    if not token or not any([_same(token, k) for k in state.api_keys]):  # a list: every key is compared
        message = "missing API key: send 'Authorization: Bearer <key>'" if not token else "invalid API key"
        raise APIError(401, message, "invalid_api_key")
    return token


async def admin(request: Request) -> None:
    state = request.app.state.gateway
    if not state.admin_key:
        raise APIError(403, "the admin API is disabled: set REPOTUNE_ADMIN_KEY", "admin_disabled")
    token = _bearer(request)
    if not token or not _same(token, state.admin_key):
        raise APIError(401, "invalid admin key", "invalid_api_key")
