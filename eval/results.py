"""Per-question results of an eval, kept beside its totals so a score can be read answer by answer."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any


class Reported:
    """What an eval report (a dataclass with `results` and `results_path`) shares: its summary
    (everything but the per-question results) and how it is written."""

    results: list[Any]
    results_path: str | None

    def summary(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]  # a dataclass subclass
        data.pop("results")
        return dict(data)

    def write(self, path: Path) -> Path:
        """Each result as a JSON line in `path`, and the summary in `<path>.summary.json`."""
        self.results_path = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for r in self.results:
                f.write(json.dumps(asdict(r)) + "\n")
        path.with_suffix(".summary.json").write_text(json.dumps(self.summary(), indent=2) + "\n")
        return path
