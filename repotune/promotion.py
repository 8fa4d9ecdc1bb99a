"""Promotion and rollback as one library call: the CLI, the eval gate and the cycle share it.

A swap goes through the running server when there is one (it loads the version into
every engine, sends one smoke request, and only then records the flip, so the alias has
moved when the call returns), else straight into the registry, which a server applies
when it starts. Either way the version must have been trained on the configured base.
"""

from __future__ import annotations

from typing import Any

import httpx

from repotune import db as store
from repotune import models, registry
from repotune.config import Settings


def promote(settings: Settings, lineage: str, version: int, actor: str, reason: str,
            server: tuple[str, str] | None = None) -> registry.Adapter:
    """Make `version` the one the lineage's alias serves; raises registry.RegistryError if it cannot.
    `server` (its URL and admin key) names a server other than the configured one (eval's own)."""
    db = _open(settings)
    target = registry.get(db, lineage, version)
    return _swap(settings, db, target, "promote", {"lineage": lineage, "version": version}, actor, reason, server)


def rollback(
    settings: Settings, lineage: str, actor: str, reason: str, to: int | None = None
) -> registry.Adapter:
    """Promote an earlier version again: the newest superseded one, or `to`."""
    db = _open(settings)
    target = registry.rollback_target(db, lineage, to)
    return _swap(settings, db, target, "rollback", {"lineage": lineage, "to": target.version}, actor, reason)


def _swap(
    settings: Settings, db: Any, target: registry.Adapter, action: str, payload: dict[str, Any], actor: str,
    reason: str, server: tuple[str, str] | None = None,
) -> registry.Adapter:
    check_base(settings, target)
    if not ask_server(settings, action, {**payload, "reason": reason, "actor": actor}, server):
        registry.promote(db, target.lineage, target.version, actor, reason)
    return registry.get(db, target.lineage, target.version)


def _open(settings: Settings) -> Any:
    try:
        return store.open_db(store.db_path(settings.data_dir))
    except store.StoreError as e:
        raise registry.RegistryError(str(e)) from None


def server_url(settings: Settings) -> str:
    serve = settings.config.serve
    host = "127.0.0.1" if serve.host in ("0.0.0.0", "::") else serve.host
    return f"http://{host}:{serve.port}"


def ask_server(settings: Settings, action: str, payload: dict[str, Any],
               server: tuple[str, str] | None = None) -> bool:
    """Ask a running server's admin API to act (a swap: load, smoke, then record; a reload of the
    domain index); False if none is running."""
    url, key = server or (server_url(settings), settings.secrets.admin_key)
    try:
        httpx.get(f"{url}/health", timeout=2.0)
    except httpx.HTTPError:
        return False  # no server: the caller records the change; a server applies it at start
    if not key:
        raise registry.RegistryError(f"a server is running at {url}; set REPOTUNE_ADMIN_KEY to reach its admin API")
    admin(url, key, action, payload)
    return True


def admin(url: str, key: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST `payload` to the server's `/admin/<action>`; registry.RegistryError with the server's reason."""
    r = httpx.post(f"{url}/admin/{action}", json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=600.0)
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:300]
        raise registry.RegistryError(f"the server refused {action}: {message}")
    data: dict[str, Any] = r.json()
    return data


def check_base(settings: Settings, adapter: registry.Adapter) -> None:
    """Refuse a version trained on another base than the configured one."""
    try:
        base = models.resolve(settings.config.model.base)
    except models.ModelError as e:
        raise registry.RegistryError(str(e)) from None
    try:
        models.ensure_same_base(f"{adapter.lineage} v{adapter.version}", adapter.base_fingerprint, base.spec,
                                base.fingerprint, adapter.base_model)
    except models.IncompatibleBase as e:
        raise registry.RegistryError(str(e)) from None
