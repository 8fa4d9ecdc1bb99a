"""API keys and the admin key, as FastAPI dependencies of the routes that need them.

Client routes depend on `client_key` (one of `REPOTUNE_API_KEYS`, the admin key, or
"anonymous" with `serve.auth = false`); admin routes on `admin` (`REPOTUNE_ADMIN_KEY`;
unset, the admin API is off — 403 — rather than open). The admin key is accepted on the
client routes so that eval asks what clients would be served; only it can address a
version held for evaluation (`is_admin`). Keys are compared in constant time against every
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
    keys = [*state.api_keys, *([state.admin_key] if state.admin_key else [])]
    if not token or not any([_same(token, k) for k in keys]):  # a list: every key is compared
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


def is_admin(request: Request) -> bool:
    """Whether the request carries the admin key."""
    key = request.app.state.gateway.admin_key
    token = _bearer(request)
    return bool(key and token and _same(token, key))
