"""Where datasets live and how their splits are read: shared by the tuner, which writes them,
and eval, which asks their held-out questions.

A dataset is a folder named by its content hash under `data_dir/datasets/<lineage>/`;
`LATEST` in the lineage's folder names the newest built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repotune import manifests

LATEST = "LATEST"


class DatasetError(Exception):
    """No such dataset, or none built yet; the message says what to run."""


def root(data_dir: Path, lineage: str) -> Path:
    return data_dir / "datasets" / lineage


def find(data_dir: Path, lineage: str, name: str | None = None) -> Path:
    """The dataset `name` (a hash or its start), or the newest built."""
    folder = root(data_dir, lineage)
    if name is None:
        pointer = folder / LATEST
        if not pointer.is_file():
            raise DatasetError(f"no dataset built for {lineage} yet: run `repotune data build`")
        name = pointer.read_text().strip()
    found = sorted(p for p in folder.glob(f"{name}*") if (p / manifests.FILE).is_file()) if folder.is_dir() else []
    if len(found) != 1:
        raise DatasetError(f"no dataset {name!r} in {folder}" if not found else f"{name!r} names several datasets")
    return found[0]


def read(folder: Path, split: str) -> list[dict[str, Any]]:
    path = folder / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
