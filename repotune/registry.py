"""The adapter registry: every version of every lineage, its status, and why it changed.

A lineage is one domain's chain of LoRA adapters; the registry assigns each new adapter
the next integer version and keeps it in an immutable folder,
`data_dir/adapters/<lineage>/v<N>/` (copied elsewhere first, then renamed into place, so
a path never changes content and vLLM may re-read it at any time).

Statuses: `candidate` (registered, not yet judged), `promoted` (what the alias
`<lineage>` serves), `superseded` (was promoted, then replaced), `rejected` (failed the
gate), `retired` (never to be served again), `failed` (would not load or answer).
Exactly one version per lineage is promoted once any has been: the alias has no other
source of truth, and a partial unique index makes a second promoted row impossible even
for two admins promoting at once. Every transition runs in one `BEGIN IMMEDIATE`
transaction and appends an event row with actor, time and reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repotune import db as store
from repotune import manifests
from repotune.manifests import AdapterManifest
from repotune.models import MANIFEST, Base, IncompatibleBase, ensure_same_base

if TYPE_CHECKING:
    import sqlite_utils  # loaded at run time by repotune.db (see there)

STATUSES = ("candidate", "promoted", "superseded", "rejected", "retired", "failed")
# Which statuses each status may change to. Promotion of another version is what
# supersedes the promoted one; retiring the promoted version is refused (roll back first).
TRANSITIONS: dict[str, frozenset[str]] = {
    "candidate": frozenset({"promoted", "rejected", "retired", "failed"}),
    "promoted": frozenset({"superseded", "failed"}),
    "superseded": frozenset({"promoted", "retired", "failed"}),
    "rejected": frozenset({"promoted", "retired"}),
    "failed": frozenset({"promoted", "retired"}),
    "retired": frozenset(),
}
_VERSION_RE = re.compile(r"^v?(\d+)$")


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why."""


class NotFound(RegistryError):
    """The lineage has no such version."""


@dataclass(frozen=True)
class Adapter:
    lineage: str
    version: int
    path: Path
    base_model: str
    base_fingerprint: str
    status: str
    created_at: str
    updated_at: str
    promoted_at: str | None
    manifest: AdapterManifest = field(default_factory=AdapterManifest)

    @property
    def engine_name(self) -> str:
        """The name the engine serves this version under."""
        return engine_name(self.lineage, self.version)


def engine_name(lineage: str, version: int) -> str:
    return f"{lineage}-v{version}"


def parse_version(text: str | int) -> int:
    """`7`, `"7"` or `"v7"` → 7."""
    if isinstance(text, int):
        return text
    match = _VERSION_RE.match(text.strip())
    if not match:
        raise RegistryError(f"{text!r} is not a version: use a number such as 7 or v7")
    return int(match.group(1))


# --- reading ----------------------------------------------------------------------------


def get(db: sqlite_utils.Database, lineage: str, version: int) -> Adapter:
    rows = list(db.query("select * from adapters where lineage = ? and version = ?", [lineage, version]))
    if not rows:
        raise NotFound(f"{lineage} has no version v{version}")
    return _adapter(rows[0])


def versions(db: sqlite_utils.Database, lineage: str) -> list[Adapter]:
    rows = db.query("select * from adapters where lineage = ? order by version", [lineage])
    return [_adapter(r) for r in rows]


def lineages(db: sqlite_utils.Database) -> list[str]:
    """Every lineage that has a version."""
    return [r["lineage"] for r in db.query("select distinct lineage from adapters order by lineage")]


def promoted(db: sqlite_utils.Database, lineage: str) -> Adapter | None:
    rows = list(db.query("select * from adapters where lineage = ? and status = 'promoted'", [lineage]))
    return _adapter(rows[0]) if rows else None


def events(db: sqlite_utils.Database, lineage: str, limit: int = 50) -> list[dict[str, Any]]:
    return list(db.query("select * from events where lineage = ? order by id desc limit ?", [lineage, limit]))


def _adapter(row: dict[str, Any]) -> Adapter:
    return Adapter(
        lineage=row["lineage"],
        version=row["version"],
        path=Path(row["path"]),
        base_model=row["base_model"],
        base_fingerprint=row["base_fingerprint"],
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        promoted_at=row["promoted_at"],
        manifest=manifests.parse(AdapterManifest, json.loads(row["manifest"] or "{}"),
                                 f"the registry's manifest of {row['lineage']} v{row['version']}"),
    )


# --- registering ------------------------------------------------------------------------


def check_servable(folder: Path, max_lora_rank: int) -> dict[str, Any]:
    """The adapter's PEFT config, if it is a LoRA adapter vLLM can serve; else an error."""
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise RegistryError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise RegistryError(f"{config_file} is not valid JSON: {e}") from e
    if config.get("peft_type") != "LORA":
        raise RegistryError(f"{folder} is a {config.get('peft_type')} adapter; only LoRA adapters can be served")
    rank = int(config.get("r", 0))
    if rank > max_lora_rank:
        raise RegistryError(f"{folder} has LoRA rank {rank}, above serve.max_lora_rank ({max_lora_rank})")
    if config.get("modules_to_save"):
        raise RegistryError(
            f"{folder} trains whole modules too (modules_to_save={config['modules_to_save']}), "
            "which vLLM cannot serve; train with LoRA layers only"
        )
    if not any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise RegistryError(f"{folder} has no adapter weights (adapter_model.safetensors)")
    return dict(config)


def register(
    db: sqlite_utils.Database,
    data_dir: Path,
    lineage: str,
    source: Path,
    base: Base,
    max_lora_rank: int,
    actor: str,
    reason: str = "",
    assume_base: bool = False,
) -> Adapter:
    """Copy an adapter folder in as the lineage's next version, with status `candidate`.

    The adapter must record (in manifest.json) the fingerprint of the base it was trained
    on, and it must be this base; `assume_base` records the current base for an adapter
    trained elsewhere that has no manifest, on the caller's word.
    """
    peft_config = check_servable(source, max_lora_rank)
    try:
        manifest = manifests.read_adapter(source)
    except manifests.ManifestError as e:
        raise RegistryError(str(e)) from None
    made_for = manifest.base_fingerprint
    if made_for:
        ensure_same_base(str(source), made_for, base.spec, base.fingerprint, manifest.base_model)
    if not made_for and not assume_base:
        raise IncompatibleBase(
            f"{source} does not record the base it was trained on ({MANIFEST} with base_fingerprint); "
            f"if it was trained on {base.spec}, register it with --assume-base"
        )
    lineage_dir = data_dir / "adapters" / lineage
    lineage_dir.mkdir(parents=True, exist_ok=True)
    _sweep_copies(lineage_dir)
    tmp = lineage_dir / f".tmp-{os.getpid()}-{store.now().replace(':', '')}"
    shutil.copytree(source, tmp)
    try:
        with store.transaction(db):
            version = _next_version(db, lineage)
            final = lineage_dir / f"v{version}"
            if final.exists():
                _drop_orphan(final, lineage, version)
            now = store.now()
            manifest = manifest.model_copy(update={
                "lineage": lineage,
                "version": version,
                "base_model": base.spec,
                "base_fingerprint": base.fingerprint,
                "created_at": manifest.created_at or now,
                "lora_rank": peft_config.get("r"),
            })
            manifests.write(tmp, manifest)
            os.rename(tmp, final)
            db.execute(
                "insert into adapters (lineage, version, path, base_model, base_fingerprint, status, "
                "created_at, updated_at, manifest) values (?, ?, ?, ?, ?, 'candidate', ?, ?, ?)",
                [lineage, version, str(final), base.spec, base.fingerprint, now, now, json.dumps(manifest.dump())],
            )
            _event(db, lineage, version, "register", None, "candidate", actor, reason or f"from {source}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return get(db, lineage, version)


def _drop_orphan(final: Path, lineage: str, version: int) -> None:
    """Remove `final` if it is this function's own, cut off between its rename and its commit.

    Such a folder records this lineage and version in its manifest (written just before the
    rename) but has no row: it was never registered, so nothing can have served it. Any
    other folder in the way is someone's, and is left for them to move.
    """
    try:
        manifest = manifests.read_adapter(final)
    except manifests.ManifestError:
        manifest = AdapterManifest()
    if manifest.lineage != lineage or manifest.version != version:
        raise RegistryError(f"{final} exists but is not in the registry; move it away first")
    shutil.rmtree(final)


def _sweep_copies(lineage_dir: Path) -> None:
    """Remove copies (`.tmp-<pid>-…`) left by registrations whose process is gone."""
    for tmp in lineage_dir.glob(".tmp-*"):
        pid = tmp.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _next_version(db: sqlite_utils.Database, lineage: str) -> int:
    row = db.execute("select max(version) from adapters where lineage = ?", [lineage]).fetchone()
    return int(row[0] or 0) + 1


# --- transitions ------------------------------------------------------------------------


def promote(db: sqlite_utils.Database, lineage: str, version: int, actor: str, reason: str) -> Adapter:
    """Make `version` the promoted one; the previously promoted becomes `superseded`."""
    with store.transaction(db):
        target = get(db, lineage, version)
        if target.status == "promoted":
            raise RegistryError(f"{lineage} v{version} is already promoted")
        _check(target, "promoted")
        current = promoted(db, lineage)
        now = store.now()
        if current:
            _set(db, current, "superseded", now)
            _event(db, lineage, current.version, "supersede", "promoted", "superseded", actor,
                   f"replaced by v{version}: {reason}")
        _set(db, target, "promoted", now, promoted_at=now)
        _event(db, lineage, version, "promote", target.status, "promoted", actor, reason)
    return get(db, lineage, version)


def rollback_target(db: sqlite_utils.Database, lineage: str, to: int | None = None) -> Adapter:
    """The version a rollback goes to: `to`, or the newest superseded version."""
    if to is not None:
        return get(db, lineage, to)
    rows = list(
        db.query(
            "select * from adapters where lineage = ? and status = 'superseded' order by version desc limit 1",
            [lineage],
        )
    )
    if not rows:
        raise RegistryError(f"{lineage} has no superseded version to roll back to")
    return _adapter(rows[0])


def rollback(db: sqlite_utils.Database, lineage: str, actor: str, reason: str, to: int | None = None) -> Adapter:
    target = rollback_target(db, lineage, to)
    return promote(db, lineage, target.version, actor, reason or "rollback")


def transition(
    db: sqlite_utils.Database, lineage: str, version: int, status: str, actor: str, reason: str
) -> Adapter:
    """Move one version to `status` (retire, reject, fail); promotion has its own function."""
    if status == "promoted":
        return promote(db, lineage, version, actor, reason)
    with store.transaction(db):
        adapter = get(db, lineage, version)
        if adapter.status == "promoted" and status != "failed":
            raise RegistryError(
                f"{lineage} v{version} is promoted; promote another version or roll back before it can be {status}"
            )
        _check(adapter, status)
        _set(db, adapter, status, store.now())
        _event(db, lineage, version, status, adapter.status, status, actor, reason)
    return get(db, lineage, version)


def record_eval(
    db: sqlite_utils.Database, lineage: str, version: int, scores: dict[str, float], gate: dict[str, Any] | None,
) -> Adapter:
    """Keep a gate run's scores (and decision) in the version's row; its folder is never written."""
    with store.transaction(db):
        adapter = get(db, lineage, version)
        manifest = adapter.manifest.model_copy(update={"scores": scores})
        if gate is not None:
            manifest = manifest.model_copy(update={"gate": manifests.GateDecision.model_validate(gate)})
        db.execute("update adapters set manifest = ?, updated_at = ? where lineage = ? and version = ?",
                   [json.dumps(manifest.dump()), store.now(), lineage, version])
    return get(db, lineage, version)


def _check(adapter: Adapter, to: str) -> None:
    if to not in TRANSITIONS[adapter.status]:
        raise RegistryError(f"{adapter.lineage} v{adapter.version} is {adapter.status} and cannot become {to}")


def _set(db: sqlite_utils.Database, adapter: Adapter, status: str, now: str, promoted_at: str | None = None) -> None:
    db.execute(
        "update adapters set status = ?, updated_at = ?, promoted_at = coalesce(?, promoted_at) "
        "where lineage = ? and version = ?",
        [status, now, promoted_at, adapter.lineage, adapter.version],
    )


def _event(
    db: sqlite_utils.Database,
    lineage: str,
    version: int | None,
    action: str,
    from_status: str | None,
    to_status: str | None,
    actor: str,
    reason: str,
) -> None:
    db.execute(
        "insert into events (at, lineage, version, action, from_status, to_status, actor, reason) "
        "values (?, ?, ?, ?, ?, ?, ?, ?)",
        [store.now(), lineage, version, action, from_status, to_status, actor, reason],
    )
