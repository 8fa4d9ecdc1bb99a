"""Cutting stored text into chunks measured in the base model's tokens.

A chunk is what later steps see of the repository: the refusal policy's index, the
synthetic Q&A's sources, retrieval. It must fit a prompt, so it is measured in tokens of
the configured base model, and it should be a unit a reader would recognise, so code is
cut at top-level definitions (Python's top-level statements, other languages at unindented
lines after a blank line), Markdown at headings, and commits and pull requests at file and
comment boundaries — packed together while they fit, and only cut by size when one unit
is larger than a chunk. Each chunk records its source (path, sha, pull request) and its
id hashes that source with the text, so cutting the same text again gives the same ids.
"""

from __future__ import annotations

import hashlib
import itertools
import json
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
    """Counts tokens with the base model's tokenizer (the fast Rust one when it has one).

    Text is counted line by line, and each distinct line once: diffs repeat the same
    context lines commit after commit, and a dictionary lookup costs far less than BPE.
    A text's count is the sum of its lines' counts; the tokenizer splits at line breaks
    almost everywhere, so this is the exact count or a few tokens over (measured: within
    6% over on code), never a chunk that is larger than it says.

    Lines are counted by `Words` where the tokenizer allows it (byte-level BPE after a
    regex split: GPT-2's, Llama 3's and Qwen's families, and builtin:tiny), with the
    same counts as the tokenizer's own but without its per-call cost; otherwise, and for
    a line holding one of its added tokens, by the tokenizer itself.
    """

    CACHE_LINES = 500_000

    def __init__(self, folder: Path):
        self._count: Callable[[list[str]], list[int]]
        self._cache: dict[str, int] = {}
        self.words: Words | None = None
        file = folder / "tokenizer.json"
        if file.is_file():
            from tokenizers import Tokenizer

            fast = Tokenizer.from_file(str(file))
            self._count = lambda texts: [len(e.ids) for e in fast.encode_batch_fast(texts, add_special_tokens=False)]
            self.words = Words.of(fast, json.loads(file.read_text(encoding="utf-8")), self._count)
        else:  # a tokenizer only transformers can read
            from transformers import AutoTokenizer

            slow = AutoTokenizer.from_pretrained(folder)
            self._count = lambda texts: [len(ids) for ids in slow(texts, add_special_tokens=False)["input_ids"]]

    def lines(self, lines: list[str]) -> list[int]:
        """The token count of each line."""
        cache = self._cache
        counts = list(map(cache.get, lines))
        if None in counts:
            new = list(dict.fromkeys(line for line, n in zip(lines, counts, strict=True) if n is None))
            if len(cache) + len(new) > self.CACHE_LINES:
                cache.clear()
                new = list(dict.fromkeys(lines))
            if self.words is None:
                cache.update(zip(new, self._count(new), strict=True))
            else:
                special = self.words.special(new)
                plain = [line for line in new if line not in special] if special else new
                cache.update(zip(plain, self.words.counts(plain), strict=True))
                if special:  # (a call into the tokenizer costs microseconds even with nothing to count)
                    cache.update(zip(special, self._count(list(special)), strict=True))
            counts = list(map(cache.__getitem__, lines))
        return counts  # type: ignore[return-value]

    def count(self, texts: list[str]) -> list[int]:
        """Each text's count, as the sum of its lines'."""
        split = [t.splitlines(keepends=True) for t in texts]
        counts = iter(self.lines([line for lines in split for line in lines]))
        return [sum(next(counts) for _ in lines) for lines in split]


# GPT-2's split, which `ByteLevel(use_regex=True)` applies.
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SAMPLE = (
    "def f(x, y=None):\n    return {'a': x ** 2}  # it's  fine\t\n\n"
    "Ünïcödé naïve café — 東京 🙂 12345 3.14e-10 0x1F\r\n"
    "  @@ -1,7 +1,8 @@ class A(B):\n+    print(\"I'll say: we're done, they've gone, I'd\")   \n"
)


class Words:
    """Exact token counts of a byte-level BPE tokenizer, a word at a time.

    Such a tokenizer splits text with a regular expression, maps each piece's bytes to
    characters and runs BPE on each piece alone, so a text's count is the sum of its
    pieces' counts, and a repository has a few thousand distinct pieces (names,
    keywords, runs of spaces). The split runs in the `regex` module and each distinct
    piece goes through the tokenizer's own BPE once. Where the tokenizer does anything
    else (a normalizer, another pre-tokenizer, BPE dropout) `of` returns None, and it
    checks itself against the tokenizer on a sample before it is used.
    """

    CACHE_WORDS = 200_000

    def __init__(self, split: str, bpe: Callable[[str], int], added: list[str]):
        import regex

        self._pattern = regex.compile(split)
        self._split = self._pattern.findall
        ascii_split = _ascii_only(split)  # the same split for ASCII text, in `re` (twice as fast)
        self._split_ascii = re.compile(ascii_split).findall if ascii_split else self._split
        self._bpe = bpe
        self._cache: dict[str, int] = {}
        self._added = [a for a in added if a]

    @classmethod
    def of(cls, tokenizer: Any, spec: dict[str, Any], reference: Callable[[list[str]], list[int]]) -> Words | None:
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        if spec.get("normalizer") or model.get("type") != "BPE" or model.get("dropout"):
            return None
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
            split = _GPT2_SPLIT
        elif (len(steps) == 2 and steps[0].get("type") == "Split" and "Regex" in (steps[0].get("pattern") or {})
              and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
              and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)
              and not steps[1].get("add_prefix_space")):
            split = steps[0]["pattern"]["Regex"]
        else:
            return None
        chars = _byte_chars()
        bpe = tokenizer.model.tokenize
        try:
            words = cls(split, lambda w: len(bpe(w.encode("utf-8").decode("latin-1").translate(chars))),
                        [a.get("content", "") for a in spec.get("added_tokens", [])])
            lines = _SAMPLE.splitlines(keepends=True)
            if words.counts(lines) != reference(lines):  # (the sample holds no added token)
                return None
        except Exception:  # a pattern the regex module reads otherwise, a model it cannot call
            return None
        return words

    def special(self, lines: list[str]) -> set[str]:
        """Those of `lines` that hold one of the tokenizer's added tokens (the tokenizer counts those)."""
        joined = "\n".join(lines)
        held = [a for a in self._added if a in joined]
        return {line for line in lines if any(a in line for a in held)} if held else set()

    def _pieces(self, line: str) -> list[str]:
        """`line` split as the tokenizer's `Split(behavior="isolated")` splits it: the matches
        and, as pieces of their own, the stretches between them."""
        pieces, at = [], 0
        for m in self._pattern.finditer(line):
            if m.start() > at:
                pieces.append(line[at : m.start()])
            if m.end() > m.start():
                pieces.append(m.group())
            at = m.end()
        if at < len(line):
            pieces.append(line[at:])
        return pieces

    def counts(self, lines: list[str]) -> list[int]:
        """Each line's count (lines holding an added token aside: see `special`)."""
        cache, bpe = self._cache, self._bpe
        known = cache.__getitem__
        split, split_ascii = self._split, self._split_ascii
        out = []
        for line in lines:
            words = split_ascii(line) if line.isascii() else split(line)
            if sum(map(len, words)) != len(line):  # text no alternative matched: a piece of its own too
                words = self._pieces(line)
            try:
                out.append(sum(map(known, words)))
            except KeyError:
                if len(cache) > self.CACHE_WORDS:
                    cache.clear()
                for word in words:
                    if word not in cache:
                        cache[word] = bpe(word)
                out.append(sum(map(known, words)))
        return out


# Unicode classes as they are on ASCII text (\s is Unicode's White_Space, which leaves out
# the separators \x1c-\x1f that `re`'s \s takes in).
_ASCII = {"p{L}": "A-Za-z", "p{N}": "0-9", "s": "\\t\\n\\x0b\\x0c\\r\\x20"}


def _ascii_only(split: str) -> str | None:
    """`split` for `re`, with its Unicode classes narrowed to ASCII; None if it has others."""
    out, i, in_class = [], 0, False
    while i < len(split):
        c = split[i]
        if c == "\\":
            escape = next((e for e in (*_ASCII, "S") if split.startswith(e, i + 1)), None)
            if escape is None:
                if split[i + 1 : i + 2] in ("p", "P", "X"):
                    return None
                out.append(split[i : i + 2])
                i += 2
                continue
            if escape == "S":
                if in_class:
                    return None
                out.append(f"[^{_ASCII['s']}]")
            else:
                out.append(_ASCII[escape] if in_class else f"[{_ASCII[escape]}]")
            i += 1 + len(escape)
            continue
        if c == "[" and not in_class:
            in_class = True
            if split.startswith("[^", i):  # so that a ] right after it is a member
                out.append("[^")
                i += 2
                continue
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def _byte_chars() -> dict[int, str]:
    """GPT-2's map of bytes to printable characters, as a `str.translate` table over latin-1."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclass
class Unit:
    """A piece that should stay whole if it fits: a definition, a section, a comment."""

    text: str
    line: int  # 1-based line it starts at in its source
    title: str = ""


@dataclass
class _Piece:
    text: str
    tokens: int
    line: int
    title: str


class Chunker:
    def __init__(self, tokens: Tokens, max_tokens: int):
        self.tokens = tokens
        self.max_tokens = max_tokens

    def cut(
        self, units: list[Unit], kind: str, path: str | None = None, sha: str | None = None,
        pr_number: int | None = None, title: str = "",
    ) -> list[Chunk]:
        """Pack `units` into chunks of at most `max_tokens`, splitting only units too large."""
        pieces: list[_Piece] = []
        for unit in units:
            lines = unit.text.splitlines(keepends=True)
            counts = self.tokens.lines(lines)
            total = sum(counts)
            if total <= self.max_tokens:
                pieces.append(_Piece(unit.text, total, unit.line, unit.title))
            else:
                pieces += self._split(unit, lines, counts)
        packed: list[list[_Piece]] = []
        size = 0
        for piece in pieces:
            if packed and size + piece.tokens <= self.max_tokens:
                packed[-1].append(piece)
                size += piece.tokens
            else:
                packed.append([piece])
                size = piece.tokens
        chunks = []
        for group in packed:
            text = group[0].text if len(group) == 1 else "".join(p.text for p in group)
            if text.strip():
                chunks.append(Chunk(
                    id=chunk_id(kind, path, sha, pr_number, text), kind=kind, path=path, sha=sha,
                    pr_number=pr_number, title=next((p.title for p in group if p.title), title),
                    start_line=group[0].line, tokens=sum(p.tokens for p in group), text=text,
                ))
        return chunks

    def _split(self, unit: Unit, lines: list[str], counts: list[int]) -> list[_Piece]:
        """A unit too large for a chunk: its lines packed into pieces that fit (a long line cut by size)."""
        out: list[_Piece] = []
        lines_of: list[list[str]] = []  # each piece's lines, joined into its text at the end
        for i, (line, n) in enumerate(zip(lines, counts, strict=True)):
            if n > self.max_tokens:
                step = max(1, len(line) * self.max_tokens // (n + 1))
                parts = [line[j : j + step] for j in range(0, len(line), step)]
                for part, m in zip(parts, self.tokens.count(parts), strict=True):
                    out.append(_Piece("", m, unit.line + i, unit.title))
                    lines_of.append([part])
            elif out and out[-1].tokens + n <= self.max_tokens:
                out[-1].tokens += n
                lines_of[-1].append(line)
            else:
                out.append(_Piece("", n, unit.line + i, unit.title))
                lines_of.append([line])
        for piece, piece_lines in zip(out, lines_of, strict=True):
            piece.text = "".join(piece_lines)
        return out


def chunk_id(kind: str, path: str | None, sha: str | None, pr_number: int | None, text: str) -> str:
    source = f"{kind}\0{path or ''}\0{sha or ''}\0{pr_number or ''}\0{text}"
    return hashlib.sha256(source.encode("utf-8", "replace")).hexdigest()[:32]


def file_units(path: str, text: str) -> list[Unit]:
    """A file as units: Markdown sections, or top-level definitions of code."""
    if path.lower().endswith(_MARKDOWN):
        return section_units(text)
    starts = _python_starts(text) if path.endswith(".py") else _unindented_starts(text)
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


# What can hide a line break from Python's tokenizer (a string, a comment, an open bracket, a
# backslash), and the breaks that can start a statement at column 0.
_PY_SCAN = re.compile(r"""
    (?P<s>\'\'\'(?:[^'\\]|\\.|'(?!''))*(?:\'\'\'|\Z) | \"\"\"(?:[^"\\]|\\.|"(?!""))*(?:\"\"\"|\Z)
         | '(?:[^'\\\n]|\\.)*' | "(?:[^"\\\n]|\\.)*")
    | (?P<c>\#[^\n]*) | (?P<o>[(\[{]) | (?P<x>[)\]}]) | (?P<b>\\\n) | (?P<n>\n(?=[^ \t\r\n\f\#]))
""", re.X | re.S)
_DEFINES = ("def ", "class ", "async def ")
_CLAUSE = re.compile(r"(?:else|elif|except|finally)\b")  # the rest of a compound statement


def _python_starts(text: str) -> list[int]:
    """0-based first lines of top-level statements (decorators included): the lines `ast`
    starts its module's statements at, found by skipping strings, comments and brackets
    instead of parsing (five times faster, and it reads code that does not parse)."""
    depth, breaks = 0, [0]
    for m in _PY_SCAN.finditer(text):
        kind = m.lastgroup
        if kind == "n" and (depth == 0 or text.startswith(_DEFINES, m.end())):
            depth = 0  # `def` and `class` cannot be inside brackets: the code left one open
            breaks.append(m.end())
        elif kind == "o":
            depth += 1
        elif kind == "x" and depth:
            depth -= 1
    starts: list[int] = []
    line = last = 0
    decorated = False
    for at in breaks:
        line += text.count("\n", last, at)
        last = at
        first = text[at : at + 1]
        if not first or first in " \t\r\n\f#\\" or _CLAUSE.match(text, at):
            continue
        if not decorated:  # a decorator's statement starts at its first decorator
            starts.append(line)
        decorated = first == "@"
    return starts


def _unindented_starts(text: str) -> list[int]:
    """Lines that start at column 0 right after a blank line: where top-level blocks begin."""
    lines = text.splitlines()
    return [i for i in range(1, len(lines)) if lines[i][:1].strip() and not lines[i - 1].strip()]
