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
    """The rows of one split; a file that is missing or not JSON lines is named, with the line."""
    path = folder / f"{split}.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} cannot be read ({e}); build the dataset again with `repotune data build`") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{number} is not a JSON object; build the dataset again with "
                               "`repotune data build`")
        rows.append(row)
    return rows
