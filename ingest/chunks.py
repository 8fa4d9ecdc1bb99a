"""Cutting stored text into chunks measured in the base model's tokens.

A chunk is what later steps see of the repository: the refusal policy's index, the
synthetic Q&A's sources, retrieval. It must fit a prompt, so it is measured in tokens of
the configured base model, and it should be a unit a reader would recognise, so code is
cut at top-level definitions (Python through `ast`, other languages at unindented lines
after a blank line), Markdown at headings, and commits and pull requests at file and
comment boundaries — packed together while they fit, and only cut by size when one unit
is larger than a chunk. Each chunk records its source (path, sha, pull request) and its
id hashes that source with the text, so cutting the same text again gives the same ids.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one tokenizer thread per worker process

_HEADING = re.compile(r"^#{1,6} ", re.M)
_MARKDOWN = (".md", ".markdown", ".mdx", ".rst", ".txt")


@dataclass
class Chunk:
    id: str
    kind: str  # file, doc, wiki, commit, pull_request
    path: str | None
    sha: str | None
    pr_number: int | None
    title: str
    start_line: int | None
    tokens: int
    text: str

    def row(self, repo: str, trusted: bool, now: str) -> dict[str, Any]:
        return {**self.__dict__, "repo": repo, "trusted": int(trusted), "stale": 0, "created_at": now}


class Tokens:
    """Counts tokens with the base model's tokenizer (the fast Rust one when it has one)."""

    def __init__(self, folder: Path):
        self._count: Callable[[list[str]], list[int]]
        file = folder / "tokenizer.json"
        if file.is_file():
            from tokenizers import Tokenizer

            fast = Tokenizer.from_file(str(file))
            self._count = lambda texts: [len(e.ids) for e in fast.encode_batch(texts, add_special_tokens=False)]
        else:  # a tokenizer only transformers can read
            from transformers import AutoTokenizer

            slow = AutoTokenizer.from_pretrained(folder)
            self._count = lambda texts: [len(ids) for ids in slow(texts, add_special_tokens=False)["input_ids"]]

    def count(self, texts: list[str]) -> list[int]:
        return list(self._count(texts)) if texts else []


@dataclass
class Unit:
    """A piece that should stay whole if it fits: a definition, a section, a comment."""

    text: str
    line: int  # 1-based line it starts at in its source
    title: str = ""


class Chunker:
    def __init__(self, tokens: Tokens, max_tokens: int):
        self.tokens = tokens
        self.max_tokens = max_tokens

    def cut(
        self, units: list[Unit], kind: str, path: str | None = None, sha: str | None = None,
        pr_number: int | None = None, title: str = "",
    ) -> list[Chunk]:
        """Pack `units` into chunks of at most `max_tokens`, splitting only units too large."""
        pieces = [p for u in units for p in self._fit(u)]
        counts = self.tokens.count([p.text for p in pieces])
        packed: list[tuple[list[Unit], int]] = []
        for piece, n in zip(pieces, counts, strict=True):
            if packed and packed[-1][1] + n <= self.max_tokens:
                packed[-1][0].append(piece)
                packed[-1] = (packed[-1][0], packed[-1][1] + n)
            else:
                packed.append(([piece], n))
        texts = ["".join(p.text for p in group) for group, _ in packed]
        exact = self.tokens.count(texts)
        return [
            Chunk(
                id=chunk_id(kind, path, sha, pr_number, text), kind=kind, path=path, sha=sha, pr_number=pr_number,
                title=next((p.title for p in group if p.title), title), start_line=group[0].line, tokens=n, text=text,
            )
            for (group, _), text, n in zip(packed, texts, exact, strict=True)
            if text.strip()
        ]

    def _fit(self, unit: Unit) -> list[Unit]:
        """`unit` if it fits, else its lines packed into pieces that do (a long line cut by size)."""
        if self.tokens.count([unit.text])[0] <= self.max_tokens:
            return [unit]
        lines = unit.text.splitlines(keepends=True)
        counts = self.tokens.count(lines)
        out: list[Unit] = []
        size = 0
        for i, (line, n) in enumerate(zip(lines, counts, strict=True)):
            if n > self.max_tokens:
                step = max(1, len(line) * self.max_tokens // (n + 1))
                out += [Unit(line[j : j + step], unit.line + i, unit.title) for j in range(0, len(line), step)]
                size = self.max_tokens  # nothing joins a cut line
                continue
            if out and size + n <= self.max_tokens:
                out[-1].text += line
                size += n
            else:
                out.append(Unit(line, unit.line + i, unit.title))
                size = n
        return out


def chunk_id(kind: str, path: str | None, sha: str | None, pr_number: int | None, text: str) -> str:
    source = "\0".join(str(x) for x in (kind, path or "", sha or "", pr_number or "", text))
    return hashlib.sha256(source.encode("utf-8", "replace")).hexdigest()[:32]


def file_units(path: str, text: str) -> list[Unit]:
    """A file as units: Markdown sections, or top-level definitions of code."""
    if path.lower().endswith(_MARKDOWN):
        return section_units(text)
    starts = _python_starts(text) if path.endswith(".py") else None
    if starts is None:
        starts = _unindented_starts(text)
    lines = text.splitlines(keepends=True)
    bounds = [*sorted({0, *starts}), len(lines)]
    return [Unit("".join(lines[a:b]), a + 1) for a, b in itertools.pairwise(bounds) if a < b]


def section_units(text: str) -> list[Unit]:
    """Markdown split at headings, each section titled by its heading."""
    starts = [m.start() for m in _HEADING.finditer(text)]
    bounds = [*sorted({0, *starts}), len(text)]
    units = []
    for a, b in itertools.pairwise(bounds):
        section = text[a:b]
        if not section:
            continue
        first = section.split("\n", 1)[0]
        title = first.lstrip("#").strip() if first.startswith("#") else ""
        units.append(Unit(section, text.count("\n", 0, a) + 1, title))
    return units


def _python_starts(text: str) -> list[int] | None:
    """0-based first lines of top-level statements (decorators included); None if it won't parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    starts = []
    for node in tree.body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        starts.append(first - 1)
    return starts


def _unindented_starts(text: str) -> list[int]:
    """Lines that start at column 0 right after a blank line: where top-level blocks begin."""
    lines = text.splitlines()
    return [i for i in range(1, len(lines)) if lines[i][:1].strip() and not lines[i - 1].strip()]
