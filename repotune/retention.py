"""What a deployment keeps after months of nightly cycles: `repotune gc`, and the end of every cycle.

Each cycle writes a dataset and, when it trains, an adapter version. Kept per lineage
(`[retention]`): the newest `keep_versions` versions, and always the promoted one, the
newest superseded (what a rollback returns to) and any candidate (it may be being
judged); the others are retired (an event says why) and their folders removed, while
their registry rows, scores and eval answers stay. Datasets: the newest `keep_datasets`,
the one `LATEST` names, and those a kept version was trained on; the others are removed.
`dry_run` reports the same list and removes nothing.
"""

from __future__ import annotations

import shutil
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repotune import datasets, manifests, registry
from repotune import db as store
from repotune.config import Settings


@dataclass
class Removal:
    kind: str  # version, dataset
    name: str  # proj v3, proj/<hash>
    path: str
    bytes: int


@dataclass
class Collected:
    dry_run: bool
    removed: list[Removal] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(r.bytes for r in self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "freed_bytes": self.freed_bytes, "removed": [asdict(r) for r in self.removed]}


def collect(settings: Settings, dry_run: bool = False) -> Collected:
    """Apply the retention policy to every lineage of the store; see the module docstring."""
    cfg = settings.config.retention
    result = Collected(dry_run)
    with closing(store.open_db(store.db_path(settings.data_dir))) as db:
        trained = registry.lineages(db)
        for lineage in trained:
            kept = _versions(db, lineage, cfg.keep_versions, result, dry_run)
            _datasets(settings.data_dir, lineage, cfg.keep_datasets, {a.manifest.dataset for a in kept}, result,
                      dry_run)
        for folder in sorted((settings.data_dir / "datasets").glob("*")):
            if folder.is_dir() and folder.name not in trained:  # built, never trained yet
                _datasets(settings.data_dir, folder.name, cfg.keep_datasets, set(), result, dry_run)
    return result


def _versions(db: Any, lineage: str, keep: int, result: Collected, dry_run: bool) -> list[registry.Adapter]:
    versions = sorted(registry.versions(db, lineage), key=lambda a: a.version, reverse=True)
    superseded = [a for a in versions if a.status == "superseded"]
    protected = {a.version for a in versions[:keep]}
    protected |= {a.version for a in versions if a.status in ("promoted", "candidate")}
    protected |= {superseded[0].version} if superseded else set()
    kept = []
    for adapter in versions:
        if adapter.version in protected:
            kept.append(adapter)
            continue
        if not adapter.path.exists():
            continue  # removed before
        result.removed.append(Removal("version", f"{lineage} v{adapter.version}", str(adapter.path),
                                      _size(adapter.path)))
        if dry_run:
            continue
        if adapter.status != "retired":
            registry.transition(db, lineage, adapter.version, "retired", "gc",
                                f"retention: beyond the newest {keep} versions")
        shutil.rmtree(adapter.path, ignore_errors=True)
    return kept


def _datasets(data_dir: Path, lineage: str, keep: int, used: set[str | None], result: Collected,
              dry_run: bool) -> None:
    folder = datasets.root(data_dir, lineage)
    built = []
    for path in folder.glob("*"):
        try:
            # created_at is to the second; the manifest file's time orders builds within one
            built.append((manifests.read_dataset(path).created_at, (path / manifests.FILE).stat().st_mtime_ns, path))
        except manifests.ManifestError:
            continue  # not a finished dataset (being written): never touched
    built.sort(reverse=True)
    latest = (folder / datasets.LATEST).read_text().strip() if (folder / datasets.LATEST).is_file() else None
    for i, (_, _, path) in enumerate(built):
        if i < keep or path.name in used or path.name == latest:
            continue
        result.removed.append(Removal("dataset", f"{lineage}/{path.name}", str(path), _size(path)))
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
