"""Which adapter versions the engines hold, and swapping them while requests run.

The registry is the only truth about what `<lineage>` means (its promoted version); this
module makes the engines match it and keeps a read-through copy of the aliases for the
request path, refreshed after every swap and on a short poll. A swap loads the version
into every upstream under its engine name (`<lineage>-v<N>`) from its immutable folder,
sends one smoke request, and only then flips the promoted row. A version that will not
load or answer is marked `failed` and the alias stays where it was. Requests hold a
lease on the engine name they were routed to, so a version is unloaded only once no
request uses it; beyond `keep_loaded` versions per lineage are unloaded when idle.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from repotune import db as store
from repotune import registry
from repotune.registry import Adapter

log = logging.getLogger("repotune.adapters")

SMOKE_PROMPT = [{"role": "user", "content": "Hello"}]


class SwapError(Exception):
    """A version that could not be loaded or did not answer; the registry says so too."""


@dataclass
class Route:
    engine_name: str
    adapter: Adapter | None  # None: the base model


@dataclass
class AdapterManager:
    db_path: Path
    upstreams: list[str]
    client: httpx.AsyncClient
    base_fingerprint: str
    base_model: str
    keep_loaded: int = 2
    loaded: dict[str, Adapter] = field(default_factory=dict)
    aliases: dict[str, Adapter] = field(default_factory=dict)  # lineage -> promoted version
    inflight: Counter[str] = field(default_factory=Counter)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle: asyncio.Condition = field(default_factory=asyncio.Condition)

    _db: Any = None

    def db(self) -> Any:
        """The store, opened (and migrated) once; the gateway's event loop is its only user."""
        if self._db is None:
            self._db = store.open_db(self.db_path)
        return self._db

    # --- the request path -----------------------------------------------------------

    def route(self, model: str) -> Route:
        """`base`, `<lineage>` or `<lineage>@v<N>` → the engine name to ask; KeyError if none."""
        if model == "base":
            return Route("base", None)
        if "@" in model:
            lineage, _, version = model.partition("@")
            name = registry.engine_name(lineage, registry.parse_version(version))
            if name in self.loaded:
                return Route(name, self.loaded[name])
            raise KeyError(model)
        adapter = self.aliases.get(model)
        if adapter is None:
            raise KeyError(model)
        return Route(adapter.engine_name, adapter)

    def missing(self, model: str) -> str:
        """Why `model` cannot be routed: the 404's message (a registry read, off the hot path)."""
        lineage, at, version = model.partition("@")
        try:
            if at:
                adapter = registry.get(self.db(), lineage, registry.parse_version(version))
                return (
                    f"{model} is {adapter.status} and not loaded: this server keeps each lineage's promoted "
                    f"version and the {self.keep_loaded - 1} superseded before it (serve.keep_loaded) loaded; "
                    f"promote or roll back to it to serve it"
                )
            if registry.versions(self.db(), lineage):
                return f"{model} has no promoted version yet: promote one (repotune adapters promote)"
        except registry.RegistryError:
            pass
        return f"the model {model!r} does not exist"

    @asynccontextmanager
    async def lease(self, engine_name: str) -> AsyncIterator[None]:
        """Hold `engine_name` loaded for the length of one request."""
        self.inflight[engine_name] += 1
        try:
            yield
        finally:
            self.inflight[engine_name] -= 1
            if self.inflight[engine_name] <= 0:
                del self.inflight[engine_name]
                async with self.idle:
                    self.idle.notify_all()

    # --- engine operations ----------------------------------------------------------

    async def _post_all(self, path: str, payload: dict[str, Any]) -> None:
        for upstream in self.upstreams:
            r = await self.client.post(f"{upstream}{path}", json=payload, timeout=120)
            if r.status_code != 200 and "already" not in r.text:
                raise SwapError(f"{upstream}{path} answered {r.status_code}: {r.text[:300]}")

    async def load(self, adapter: Adapter) -> None:
        if adapter.base_fingerprint != self.base_fingerprint:
            raise SwapError(
                f"{adapter.lineage} v{adapter.version} was trained on base {adapter.base_fingerprint}, "
                f"not on the served {self.base_model} ({self.base_fingerprint})"
            )
        if not adapter.path.is_dir():
            raise SwapError(f"{adapter.path} does not exist")
        await self._post_all(
            "/v1/load_lora_adapter", {"lora_name": adapter.engine_name, "lora_path": str(adapter.path)}
        )
        self.loaded[adapter.engine_name] = adapter

    async def smoke(self, adapter: Adapter) -> None:
        for upstream in self.upstreams:
            r = await self.client.post(
                f"{upstream}/v1/chat/completions",
                json={"model": adapter.engine_name, "messages": SMOKE_PROMPT, "max_tokens": 4, "temperature": 0},
                timeout=120,
            )
            if r.status_code != 200 or not r.json().get("choices"):
                raise SwapError(f"smoke request to {adapter.engine_name} on {upstream} failed: {r.text[:300]}")

    async def unload(self, engine_name: str) -> None:
        """Unload once no request holds the name."""
        async with self.idle:
            await self.idle.wait_for(lambda: self.inflight[engine_name] <= 0)
        self.loaded.pop(engine_name, None)
        for upstream in self.upstreams:
            r = await self.client.post(f"{upstream}/v1/unload_lora_adapter", json={"lora_name": engine_name})
            if r.status_code != 200:
                log.warning("unloading %s from %s: %s %s", engine_name, upstream, r.status_code, r.text[:200])

    # --- swaps ----------------------------------------------------------------------

    async def promote(self, lineage: str, version: int, actor: str, reason: str) -> Adapter:
        """Load, smoke, then flip the alias; on failure mark the version failed and keep the alias."""
        async with self.lock:
            db = self.db()
            target = registry.get(db, lineage, version)
            if target.status == "promoted" and target.engine_name in self.loaded:
                raise registry.RegistryError(f"{lineage} v{version} is already promoted")
            await self._ready(db, target, actor, smoke=True)  # every swap answers one request first
            promoted = registry.promote(db, lineage, version, actor, reason) if target.status != "promoted" else target
            self.aliases[lineage] = promoted
            self.loaded[promoted.engine_name] = promoted
        asyncio.get_running_loop().create_task(self.trim(lineage))
        return promoted

    async def _ready(self, db: Any, adapter: Adapter, actor: str, smoke: bool = False) -> None:
        """Load and smoke-test `adapter`; if the engines already hold it, smoke only when asked."""
        if adapter.engine_name in self.loaded and not smoke:
            return
        try:
            if adapter.engine_name not in self.loaded:
                await self.load(adapter)
            await self.smoke(adapter)
        except (SwapError, httpx.HTTPError) as e:
            self.loaded.pop(adapter.engine_name, None)
            if adapter.status != "failed":
                registry.transition(db, adapter.lineage, adapter.version, "failed", actor, str(e))
            raise SwapError(f"{adapter.lineage} v{adapter.version} failed: {e}") from e

    async def reconcile(self, actor: str = "gateway") -> None:
        """Make the engines hold each lineage's promoted version (falling back if it fails)."""
        async with self.lock:
            db = self.db()
            lineages = [r["lineage"] for r in db.query("select distinct lineage from adapters")]
            for lineage in lineages:
                await self._reconcile_lineage(db, lineage, actor)
        for lineage in list(self.aliases):
            await self.trim(lineage)

    def desired(self, db: Any, lineage: str) -> list[Adapter]:
        """What should be loaded: the promoted version and the most recently promoted others."""
        earlier = [a for a in registry.versions(db, lineage) if a.status == "superseded"]
        earlier.sort(key=lambda a: (a.promoted_at or "", a.version), reverse=True)
        current = registry.promoted(db, lineage)
        return ([current] if current else []) + earlier[: self.keep_loaded - (1 if current else 0)]

    async def _reconcile_lineage(self, db: Any, lineage: str, actor: str) -> None:
        current = registry.promoted(db, lineage)
        if current is None:
            self.aliases.pop(lineage, None)
            return
        try:
            await self._ready(db, current, actor)
            self.aliases[lineage] = current
        except SwapError as e:
            log.error("%s", e)
        else:
            for other in self.desired(db, lineage)[1:]:
                if other.engine_name not in self.loaded:
                    try:
                        await self.load(other)
                    except (SwapError, httpx.HTTPError) as e:
                        log.error("could not reload %s v%s: %s", lineage, other.version, e)
            return
        for fallback in reversed(registry.versions(db, lineage)):
            if fallback.status != "superseded":
                continue
            try:
                await self._ready(db, fallback, actor)
            except SwapError as e:
                log.error("%s", e)
                continue
            self.aliases[lineage] = registry.promote(
                db, lineage, fallback.version, actor, f"v{current.version} failed to load; fell back"
            )
            return
        self.aliases.pop(lineage, None)
        log.error("%s has no version that loads; serving it is suspended", lineage)

    async def trim(self, lineage: str) -> None:
        """Unload versions of `lineage` beyond the desired ones, each once no request uses it."""
        keep = {a.engine_name for a in self.desired(self.db(), lineage)}
        for adapter in [a for a in self.loaded.values() if a.lineage == lineage]:
            if adapter.engine_name not in keep:
                await self.unload(adapter.engine_name)

    def models(self) -> list[dict[str, Any]]:
        """What `/v1/models` lists beside `base`: aliases and loaded versions."""
        out = []
        for lineage, adapter in sorted(self.aliases.items()):
            out.append(_model_entry(lineage, adapter, self.base_model, alias=True))
        for _, adapter in sorted(self.loaded.items()):
            out.append(_model_entry(f"{adapter.lineage}@v{adapter.version}", adapter, self.base_model, alias=False))
        return out


def _model_entry(model_id: str, adapter: Adapter, base_model: str, alias: bool) -> dict[str, Any]:
    created = adapter.promoted_at if alias and adapter.promoted_at else adapter.created_at
    return {
        "id": model_id,
        "object": "model",
        "created": int(datetime.fromisoformat(created).timestamp()),
        "owned_by": "repotune",
        "lineage": adapter.lineage,
        "version": adapter.version,
        "status": adapter.status,
        "promoted_at": adapter.promoted_at,
        "base_model": base_model,
        "knowledge_cursor": adapter.manifest.get("ingest_cursor"),
    }
