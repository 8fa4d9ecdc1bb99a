"""Dependencies point one way (DESIGN.md): every part may import the kernel (`repotune`); the tuner
calls ingest and eval; serve, ingest and eval import none of the other parts, and the kernel none
at all except the command line, which puts every part's commands under one `repotune`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("repotune", "serve", "ingest", "tuner", "eval")
ALLOWED = {"tuner": {"ingest", "eval"}}
ENTRY = ROOT / "repotune" / "cli.py"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_no_part_imports_one_it_may_not() -> None:
    wrong = []
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            if path == ENTRY:
                continue
            for other in _imports(path) & set(PARTS) - {part, "repotune"} - ALLOWED.get(part, set()):
                wrong.append(f"{path.relative_to(ROOT)} imports {other}")
    assert not wrong, wrong
    assert _imports(ROOT / "eval" / "refusal.py") >= {"repotune"}  # the scan reads real imports
