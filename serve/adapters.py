"""Which adapter versions the engines hold, and swapping them while requests run.

The registry is the only truth about what `<lineage>` means (its promoted version); this
module makes the engines match it and keeps a read-through copy of the aliases for the
request path, refreshed after every swap and on a short poll. A swap loads the version
into every upstream under its engine name (`<lineage>-v<N>`) from its immutable folder,
sends one smoke request, and only then flips the promoted row. A version that will not
load or answer is marked `failed` and the alias stays where it was; an engine that cannot
be reached at all (starting, restarting) says nothing of the version, which stays as it
was (`EngineUnavailable`, a 503 on the admin routes). Requests hold a
lease on the engine name they were routed to, so a version is unloaded only once no
request uses it; beyond `keep_loaded` versions per lineage are unloaded when idle.

A version being evaluated is *held* (`hold`): loaded under its engine name with no alias
pointing to it, addressable as `<lineage>@v<N>` with the admin key only, and kept out of
trimming until it is released or its lease runs out (an eval that died leaves nothing
loaded for long).

The registry is read and written on a thread of its own (`store`), which owns the SQLite
connection, so a slow disk or a writer holding the lock never stalls the event loop that
relays every client's tokens.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from repotune import db as store
from repotune import models, registry
from repotune.registry import Adapter

log = logging.getLogger("repotune.adapters")

SMOKE_PROMPT = [{"role": "user", "content": "Hello"}]
T = TypeVar("T")


class WrongBase(Exception):
    """The version was trained on another base than this server's: it is not broken, only not servable here
    (after a change of base model); it keeps its status."""


class EngineUnavailable(Exception):
    """The engine could not be reached (starting, restarting, gone): nothing is said of the adapter."""


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
    held: dict[str, tuple[Adapter, float]] = field(default_factory=dict)  # engine name → (version, lease end)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle: asyncio.Condition = field(default_factory=asyncio.Condition)

    _db: Any = None
    _thread: ThreadPoolExecutor | None = None
    _other_base: set[str] = field(default_factory=set)  # lineages whose promoted version is of another base

    async def store(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(db, *args)` on the store's own thread, which opens the connection and alone uses it."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, functools.partial(self._call, fn, *args)
        )

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._db is None:
            self._db = store.open_db(self.db_path)
        return fn(self._db, *args)

    async def close(self) -> None:
        if self._thread is not None:
            if self._db is not None:
                await self.store(lambda db: db.conn.close())
            self._thread.shutdown(wait=True)
            self._thread, self._db = None, None

    # --- the request path -----------------------------------------------------------

    def route(self, model: str, admin: bool = False) -> Route:
        """`base`, `<lineage>` or `<lineage>@v<N>` → the engine name to ask; KeyError if none.
        A held version (under evaluation) is there for the admin key alone."""
        if model == "base":
            return Route("base", None)
        if "@" in model:
            lineage, _, version = model.partition("@")
            name = registry.engine_name(lineage, registry.parse_version(version))
            if name in self.loaded:
                return Route(name, self.loaded[name])
            if admin and name in self.held:
                return Route(name, self.held[name][0])
            raise KeyError(model)
        adapter = self.aliases.get(model)
        if adapter is None:
            raise KeyError(model)
        return Route(adapter.engine_name, adapter)

    async def missing(self, model: str) -> str:
        """Why `model` cannot be routed: the 404's message (a registry read, off the hot path)."""
        lineage, at, version = model.partition("@")
        try:
            if at:
                adapter = await self.store(registry.get, lineage, registry.parse_version(version))
                return (
                    f"{model} is {adapter.status} and not loaded: this server keeps each lineage's promoted "
                    f"version and the {self.keep_loaded - 1} superseded before it (serve.keep_loaded) loaded; "
                    f"promote or roll back to it to serve it"
                )
            promoted = await self.store(registry.promoted, lineage)
            if promoted is not None and promoted.base_fingerprint != self.base_fingerprint:
                return (f"{model} v{promoted.version} was trained on {promoted.base_model}, not on this server's "
                        f"base ({self.base_model}): ask \"base\" until a cycle has trained and promoted a version "
                        "on it, or roll back to one that was")
            if await self.store(registry.versions, lineage):
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

    async def _engine_holds(self, upstream: str, engine_name: str) -> bool:
        """Whether the engine lists `engine_name` among its models (a LoRA it has loaded).

        Asked before a load instead of reading the engine's refusal: vLLM answers a second
        load of a name with a 400 whose only mark is its wording ("already been loaded").
        A name always means the same immutable folder, so one the engine holds is current.
        """
        r = await self.client.get(f"{upstream}/v1/models", timeout=30)
        r.raise_for_status()
        return any(m.get("id") == engine_name for m in r.json().get("data", []))

    async def _load_all(self, adapter: Adapter) -> None:
        payload = {"lora_name": adapter.engine_name, "lora_path": str(adapter.path)}
        for upstream in self.upstreams:
            if await self._engine_holds(upstream, adapter.engine_name):
                continue  # an engine restarted by someone else, or a second gateway, loaded it
            r = await self.client.post(f"{upstream}/v1/load_lora_adapter", json=payload, timeout=120)
            if r.status_code != 200:
                raise SwapError(f"{upstream} could not load {adapter.engine_name}: {r.status_code} {r.text[:300]}")

    async def load(self, adapter: Adapter) -> None:
        try:
            models.ensure_same_base(f"{adapter.lineage} v{adapter.version}", adapter.base_fingerprint,
                                    self.base_model, self.base_fingerprint, adapter.base_model)
        except models.IncompatibleBase as e:
            raise WrongBase(str(e)) from None
        if not adapter.path.is_dir():
            raise SwapError(f"{adapter.path} does not exist")
        await self._load_all(adapter)
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
            target = await self.store(registry.get, lineage, version)
            if target.status == "promoted" and target.engine_name in self.loaded:
                raise registry.RegistryError(f"{lineage} v{version} is already promoted")
            await self._ready(target, actor, smoke=True)  # every swap answers one request first
            promoted = target
            if target.status != "promoted":
                promoted = await self.store(registry.promote, lineage, version, actor, reason)
            self.aliases[lineage] = promoted
            self.loaded[promoted.engine_name] = promoted
        asyncio.get_running_loop().create_task(self.trim(lineage))
        return promoted

    async def _ready(self, adapter: Adapter, actor: str, smoke: bool = False) -> None:
        """Load and smoke-test `adapter`; if the engines already hold it, smoke only when asked."""
        if adapter.engine_name in self.loaded and not smoke:
            return
        try:
            if adapter.engine_name not in self.loaded:
                await self.load(adapter)
            await self.smoke(adapter)
        except httpx.TransportError as e:  # the engine's fault, not the version's: it stays as it is
            self.loaded.pop(adapter.engine_name, None)
            raise EngineUnavailable(f"the engine could not be reached to load {adapter.lineage} "
                                    f"v{adapter.version}: {e or type(e).__name__}") from e
        except WrongBase as e:
            raise SwapError(str(e)) from e
        except (SwapError, httpx.HTTPError) as e:
            self.loaded.pop(adapter.engine_name, None)
            if adapter.status != "failed":
                await self.store(registry.transition, adapter.lineage, adapter.version, "failed", actor, str(e))
            raise SwapError(f"{adapter.lineage} v{adapter.version} failed: {e}") from e

    async def reconcile(self, actor: str = "gateway") -> None:
        """Make the engines hold each lineage's promoted version (falling back if it fails)."""
        async with self.lock:
            for lineage in await self.store(registry.lineages):
                await self._reconcile_lineage(lineage, actor)
        for lineage in list(self.aliases):
            await self.trim(lineage)
        now = time.monotonic()
        for name, (adapter, until) in list(self.held.items()):
            if until <= now:
                log.warning("the lease on %s ran out; unloading it", name)
                await self.release(adapter.lineage, adapter.version)

    # --- versions under evaluation ----------------------------------------------------

    async def hold(self, lineage: str, version: int, lease_s: float, actor: str) -> Adapter:
        """Load `version` (and answer one smoke request) without promoting it, for `lease_s`."""
        async with self.lock:
            adapter = await self.store(registry.get, lineage, version)
            if adapter.status in ("retired", "failed"):
                raise registry.RegistryError(f"{lineage} v{version} is {adapter.status} and cannot be loaded")
            if adapter.engine_name not in self.loaded:
                try:
                    await self.load(adapter)
                    self.loaded.pop(adapter.engine_name, None)  # held, not served: no alias, no listing
                    await self.smoke(adapter)
                except httpx.TransportError as e:
                    self.loaded.pop(adapter.engine_name, None)
                    raise EngineUnavailable(f"the engine could not be reached to load {lineage} v{version}: "
                                            f"{e or type(e).__name__}") from e
                except WrongBase as e:
                    raise SwapError(str(e)) from e
                except (SwapError, httpx.HTTPError) as e:
                    self.loaded.pop(adapter.engine_name, None)
                    if adapter.status == "candidate":
                        await self.store(registry.transition, lineage, version, "failed", actor, str(e))
                    raise SwapError(f"{lineage} v{version} failed: {e}") from e
            self.held[adapter.engine_name] = (adapter, time.monotonic() + lease_s)
        return adapter

    async def restore_held(self) -> None:
        """Load the held versions again into an engine that restarted (an eval in progress waits it out)."""
        for name, (adapter, _) in list(self.held.items()):
            try:
                await self._load_all(adapter)
            except (SwapError, httpx.HTTPError) as e:
                log.error("could not reload %s, held for evaluation: %s", name, e)

    async def release(self, lineage: str, version: int) -> bool:
        """End a hold; the version is unloaded unless it is served anyway. False if it was not held."""
        name = registry.engine_name(lineage, version)
        if self.held.pop(name, None) is None:
            return False
        if name not in self.loaded:
            await self.unload(name)
        return True

    async def desired(self, lineage: str) -> list[Adapter]:
        """What should be loaded: the promoted version and the most recently promoted others."""
        return await self.store(_desired, lineage, self.keep_loaded)

    async def _reconcile_lineage(self, lineage: str, actor: str) -> None:
        current = await self.store(registry.promoted, lineage)
        if current is None:
            self.aliases.pop(lineage, None)
            return
        if current.base_fingerprint != self.base_fingerprint:  # the base model changed: base answers meanwhile
            if self.aliases.pop(lineage, None) is not None or lineage not in self._other_base:
                log.warning("%s v%s was trained on %s, not on this server's base: %s is not served until a "
                            "version trained on this base is promoted", lineage, current.version,
                            current.base_model, lineage)
            self._other_base.add(lineage)
            return
        self._other_base.discard(lineage)
        try:
            await self._ready(current, actor)
            self.aliases[lineage] = current
        except EngineUnavailable as e:  # not the version's fault: the next reconcile tries again
            log.warning("%s", e)
            return
        except SwapError as e:
            log.error("%s", e)
        else:
            for other in (await self.desired(lineage))[1:]:
                if other.engine_name not in self.loaded:
                    try:
                        await self.load(other)
                    except (SwapError, WrongBase, httpx.HTTPError) as e:
                        log.error("could not reload %s v%s: %s", lineage, other.version, e)
            return
        for fallback in reversed(await self.store(registry.versions, lineage)):
            if fallback.status != "superseded":
                continue
            try:
                await self._ready(fallback, actor)
            except EngineUnavailable as e:
                log.warning("%s", e)
                return
            except SwapError as e:
                log.error("%s", e)
                continue
            self.aliases[lineage] = await self.store(
                registry.promote, lineage, fallback.version, actor, f"v{current.version} failed to load; fell back"
            )
            return
        self.aliases.pop(lineage, None)
        log.error("%s has no version that loads; serving it is suspended", lineage)

    async def trim(self, lineage: str) -> None:
        """Unload versions of `lineage` beyond the desired ones, each once no request uses it."""
        keep = {a.engine_name for a in await self.desired(lineage)} | set(self.held)
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


def _desired(db: Any, lineage: str, keep_loaded: int) -> list[Adapter]:
    earlier = [a for a in registry.versions(db, lineage) if a.status == "superseded"]
    earlier.sort(key=lambda a: (a.promoted_at or "", a.version), reverse=True)
    current = registry.promoted(db, lineage)
    return ([current] if current else []) + earlier[: keep_loaded - (1 if current else 0)]


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
        "knowledge_cursor": adapter.manifest.ingest_cursor,
    }
