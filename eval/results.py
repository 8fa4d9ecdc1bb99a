"""Per-question results of an eval, kept beside its totals so a score can be read answer by answer."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any


def write(results: Iterable[Any], summary: dict[str, Any], path: Path) -> Path:
    """Each result (a dataclass) as a JSON line in `path`, and `summary` in `<path>.summary.json`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(asdict(r)) + "\n")
    path.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return path
