"""Secrets out before anything is stored: detect-secrets' plugins and filters, line by line.

Every text ingest stores (diffs, messages, pull request bodies and comments, files and
docs) passes through `Scanner.redact_many` (or `redact_diffs`) first. Each secret found is replaced by a marker
naming its kind (`[REDACTED:aws-key]`) and counted. detect-secrets brings the pattern
plugins (AWS, GitHub, Slack, OpenAI, private keys, passwords in URLs, keyword
assignments, …), its entropy plugins (base64 and hex strings above a Shannon entropy
limit) and its false-positive filters (UUIDs, templates, sequential strings).

Four things are added around it:
- a private key is redacted as a whole block, BEGIN to END, not just its first line;
- files that are secrets by nature (`.env`, key and certificate stores) are dropped
  whole: `is_secret_file` tells ingest not to store them at all;
- a pre-filter made from the plugins' own patterns (`_Prefilter`): what every match of
  a pattern must contain (literals, a long run of a character class) is looked for
  first, in a pass or two over the whole text, and only the lines where some pattern
  can match go through detect-secrets, line by line, with its filters. A plugin can only
  report a line its own pattern matches, so nothing is missed; and most lines match
  none, where detect-secrets' per-line machinery costs a hundred times the search;
- what was found on each line of a file is remembered (per worker process), so a line
  that a history shows again, as context or removed, is not searched again.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# Files never stored, whatever their content.
SECRET_FILES = (
    ".env", ".env.*", "*.env", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "id_rsa", "id_dsa",
    "id_ecdsa", "id_ed25519", ".netrc", ".pgpass", ".npmrc", ".pypirc", "credentials", "*.kdbx",
)

# detect-secrets plugin types -> the marker's kind.
KINDS = {
    "AWS Access Key": "aws-key",
    "GitHub Token": "github-token",
    "GitLab Token": "gitlab-token",
    "Private Key": "private-key",
    "Basic Auth Credentials": "password-in-url",
    "Secret Keyword": "secret-assignment",
    "Base64 High Entropy String": "high-entropy-string",
    "Hex High Entropy String": "high-entropy-string",
    "JSON Web Token": "jwt",
    "OpenAI Token": "openai-key",
    "Slack Token": "slack-token",
    "Stripe Access Key": "stripe-key",
    "NPM tokens": "npm-token",
    "PyPI Token": "pypi-token",
}
# Not a secret: an address in code or docs is ordinary content.
DISABLED_PLUGINS = {"IPPublicDetector"}

_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----.*?(-----END[A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|\Z)", re.S
)
# In a unified diff, content lines start with one of these; the prefix is not scanned.
_DIFF_MARKS = ("+", "-", " ")
# What is found on a line: (secret, kind) pairs.
Found = tuple[tuple[str, str], ...]


@dataclass
class Redacted:
    text: str
    counts: Counter[str] = field(default_factory=Counter)
    blocks: list[str] = field(default_factory=list)  # a diff's: its files' parts (see `redact_diffs`)


_SECRET_FILE = re.compile("|".join(fnmatch.translate(p) for p in SECRET_FILES))
_BLOCK_PATH = re.compile(r"diff --git a/(.*?) b/(.*)")


def is_secret_file(path: str) -> bool:
    return _SECRET_FILE.match(path.rsplit("/", 1)[-1]) is not None


def kind_of(secret_type: str) -> str:
    return KINDS.get(secret_type) or re.sub(r"[^a-z0-9]+", "-", secret_type.lower()).strip("-")


class Scanner:
    """detect-secrets with every plugin but the disabled ones, set up once per process."""

    LINE_CACHE = 500_000  # lines whose findings are kept

    def __init__(self) -> None:
        from detect_secrets.core import scan
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.settings import get_plugins, transient_settings

        mapping: dict[str, type] = get_mapping_from_secret_type_to_class()
        names = [plugin.__name__ for plugin in mapping.values()]
        plugins = [{"name": name} for name in names if name not in DISABLED_PLUGINS]
        self._settings = contextlib.ExitStack()
        self._settings.enter_context(transient_settings({"plugins_used": plugins}))
        # The line-based scan that `detect-secrets scan` runs on a file, filters included;
        # its public wrapper wants a file on disk.
        self._scan_lines = scan._process_line_based_plugins
        self._prefilter = _Prefilter(get_plugins())
        self._seen: dict[tuple[str, bool], dict[str, Found]] = {}  # (file, is a diff) -> line -> found
        self._lines_seen = 0

    def close(self) -> None:
        self._settings.close()

    def candidates(self, text: str) -> list[int]:
        """0-based numbers of the lines where some plugin's pattern matches."""
        pf = self._prefilter
        found: set[int] = set()
        # Patterns with a long run look only at the lines that have one (few do), joined.
        long = sorted(pf.long_run_lines(text))
        every = text.split("\n") if long else []
        part = "\n".join(every[n] for n in long)
        found.update(long[n] for n in pf.matching_lines(part, runs=True))
        found.update(pf.matching_lines(text, runs=False))
        return sorted(found)

    def redact_many(self, texts: list[tuple[str, str, bool]]) -> list[Redacted]:
        """Each (text, filename, is_diff) with every secret found replaced by
        `[REDACTED:<kind>]`, and the counts.

        A line is looked at once per file: what was found on it is kept, by file, since a
        history shows the same lines of a file again and again, as context (two thirds of
        the diff lines of the benchmark history are ones their file showed before). The
        new lines of all the texts go through the pre-filter joined, so its fixed cost
        per pattern is paid once, not once per text."""
        outs = [Redacted(t) for t, _, _ in texts]
        for out in outs:
            if "PRIVATE KEY" in out.text:
                out.text = _PRIVATE_KEY.sub(lambda m, o=out: _count(o.counts, "private-key"), out.text)  # type: ignore[misc]
        if self._lines_seen > self.LINE_CACHE:
            self._seen.clear()
            self._lines_seen = 0
        files = [(name, diff) for _, name, diff in texts]
        lines_of = [out.text.split("\n") for out in outs]
        known = [list(map(self._seen.setdefault(file, {}).get, lines))
                 for file, lines in zip(files, lines_of, strict=True)]
        new: dict[tuple[tuple[str, bool], str], Found] = {}
        for file, lines, found in zip(files, lines_of, known, strict=True):
            if None in found:
                new.update(dict.fromkeys(((file, line) for line, f in zip(lines, found, strict=True) if f is None), ()))
        if new:
            self._look_at(new)
            for (file, line), found_there in new.items():
                self._seen[file][line] = found_there
            self._lines_seen += len(new)
        anything_new = any(new.values())
        for out, file, lines, found in zip(outs, files, lines_of, known, strict=True):
            if anything_new and None in found:  # (rare: a secret on a line not seen before)
                found = list(map(self._seen[file].__getitem__, lines))
            if not any(found):
                continue
            for n, secrets in enumerate(found):
                for value, kind in secrets or ():
                    if value in lines[n]:
                        lines[n] = lines[n].replace(value, f"[REDACTED:{kind}]")
                        out.counts[kind] += 1
            out.text = "\n".join(lines)
        return outs

    def _look_at(self, lines: dict[tuple[tuple[str, bool], str], Found]) -> None:
        """What is found on each line of a file: (secret, kind) pairs, longest first (so that
        no part of one is left behind once a shorter one inside it is replaced). A diff's
        lines are scanned without their first +, - or space."""
        keys = list(lines)
        scanned = [line[1:] if diff and line[:1] in _DIFF_MARKS else line for (_, diff), line in keys]
        by_file: dict[str, list[int]] = {}
        for i in self.candidates("\n".join(scanned)):
            by_file.setdefault(keys[i][0][0], []).append(i)
        for name, numbers in by_file.items():
            found: dict[int, set[tuple[str, str]]] = {}
            for secret in self._scan_lines([(i + 1, scanned[i]) for i in numbers], name):
                if secret.secret_value:
                    found.setdefault(secret.line_number - 1, set()).add((secret.secret_value, kind_of(secret.type)))
            for i, secrets in found.items():
                lines[keys[i]] = tuple(sorted(secrets, key=lambda s: (-len(s[0]), s)))

    def redact_diffs(self, diffs: list[list[str]]) -> list[Redacted]:
        """Commits' diffs, each as its files' blocks (`Commit.blocks`): blocks of secret files
        dropped whole, the rest scanned as their file."""
        outs = [Redacted("") for _ in diffs]
        blocks: list[tuple[int, str, str]] = []  # (diff, block, path)
        for d, diff in enumerate(diffs):
            for block in diff:
                blocks.append((d, block, _block_path(block) or "diff.txt"))
        done = self.redact_many([(block, path, True) for d, block, path in blocks if not is_secret_file(path)])
        scanned = iter(done)
        for d, _, path in blocks:
            if is_secret_file(path):
                outs[d].blocks.append(f"diff --git a/{path} b/{path}\n[REDACTED:secret-file] (not stored)\n")
                outs[d].counts["secret-file"] += 1
            else:
                part = next(scanned)
                outs[d].blocks.append(part.text)
                outs[d].counts.update(part.counts)
        for out in outs:
            out.text = "".join(out.blocks)
        return outs


class _Prefilter:
    """Each plugin's patterns, and what every match of each must contain.

    Two necessary conditions: literals (for each of a few sets, one of its strings; folded
    to lower case for a case-insensitive pattern) and, for a pattern with a long repeat
    of a character class (a 40-character key), a run of that class as long. The lines
    with a long run of any such class are found first, in one pass over the text's
    bytes, and the patterns that need one look only there. The literals are found in one
    pass (Aho-Corasick) over the text. A pattern then runs only on the lines that pass
    (most lines pass none); one with neither condition runs over all its lines.
    """

    def __init__(self, plugins: list[Any]):
        self.patterns: list[tuple[re.Pattern[str], list[set[str]] | None, _Run | None, bool]] = []
        for p in _plugin_patterns(plugins):
            fold = bool(p.flags & re.I)
            self.patterns.append((p, _required_literals(p, fold), _longest_run(p), fold))
        self.literals = {runs: _Literals({(h, fold) for _, needs, run, fold in self.patterns
                                          if (run is not None) == runs for need in needs or () for h in need})
                         for runs in (True, False)}
        runs = [run for _, _, run, _ in self.patterns if run is not None]
        # Bytes of UTF-8 beyond ASCII all count as run characters: a class like \w matches
        # letters of any script, and a run of n characters is a run of at least n bytes.
        members = {c for c in range(128) if any(r.char.fullmatch(chr(c)) for r in runs)}
        self.run_bytes = bytes(1 if c in members or c >= 128 else 0 for c in range(256))
        self.shortest_run = re.compile(re.escape(b"\x01" * min((r.length for r in runs), default=1 << 20)))

    def long_run_lines(self, text: str) -> set[int]:
        """The lines holding a run of run characters as long as the shortest run looked for."""
        data = text.encode()
        return _lines_at(data, (m.start() for m in self.shortest_run.finditer(data.translate(self.run_bytes))))

    def matching_lines(self, text: str, runs: bool) -> set[int]:
        """The lines of `text` where a pattern with (or without) a long run matches."""
        hinted, starts = self.literals[runs].lines(text)
        lines: set[int] = set()
        for pattern, needs, run, fold in self.patterns:
            if (run is not None) != runs:
                continue
            if needs is None:
                lines.update(_matching_lines(pattern, text))
                continue
            maybe = set.intersection(*(set().union(*(hinted.get((h, fold), ()) for h in need)) for need in needs))
            for line in maybe:
                start = starts[line]
                end = text.find("\n", start)
                end = len(text) if end < 0 else end
                if (run is None or run.regex.search(text, start, end)) and pattern.search(text, start, end):
                    lines.add(line)
        return lines


class _Literals:
    """Where each of a set of (literal, folded) is, in one Aho-Corasick pass per case mode."""

    def __init__(self, literals: set[tuple[str, bool]]):
        import ahocorasick

        self.automata = {}
        for fold in (False, True):
            words = sorted(h for h, f in literals if f == fold)
            if words:
                automaton = ahocorasick.Automaton()
                for word in words:
                    automaton.add_word(word, word)
                automaton.make_automaton()
                self.automata[fold] = automaton

    def lines(self, text: str) -> tuple[dict[tuple[str, bool], set[int]], dict[int, int]]:
        """Where each literal is found: its lines, and where in `text` each of those lines starts."""
        found: dict[tuple[str, bool], set[int]] = {}
        starts: dict[int, int] = {}
        for fold, automaton in self.automata.items():
            source = text.lower() if fold else text  # lower() keeps the newlines, so the line numbers
            line = previous = 0
            for end, word in automaton.iter(source):  # every match, overlaps included, by end
                line += source.count("\n", previous, end)
                previous = end
                found.setdefault((word, fold), set()).add(line)
                if line not in starts:
                    starts[line] = source.rfind("\n", 0, end) + 1
            if len(source) != len(text):  # a character lower-cased to two: offsets from the text itself
                every = [0, *(m.end() for m in re.finditer("\n", text))]
                starts = {line: every[line] for line in starts}
        return found, starts


def _lines_at(data: bytes, positions: Iterable[int]) -> set[int]:
    """The 0-based line numbers of sorted positions in `data`."""
    lines: set[int] = set()
    line = previous = 0
    for pos in positions:
        line += data.count(b"\n", previous, pos)
        previous = pos
        lines.add(line)
    return lines


def _plugin_patterns(plugins: list[Any]) -> list[re.Pattern[str]]:
    """For each plugin, patterns that together match every line the plugin could report."""
    from detect_secrets.plugins import keyword
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin

    patterns = []
    for plugin in plugins:
        if isinstance(plugin, RegexBasedDetector):
            patterns += [re.compile(p.pattern, p.flags | re.M) for p in plugin.denylist]
        elif isinstance(plugin, keyword.KeywordDetector):
            patterns.append(re.compile("|".join(keyword.DENYLIST), re.I))
        elif isinstance(plugin, HighEntropyStringsPlugin):
            # n distinct characters carry at most log2(n) bits each: a string shorter than
            # 2**limit characters cannot pass the plugin's entropy limit.
            shortest = math.ceil(2**plugin.entropy_limit)
            charset = re.escape(plugin.charset)
            patterns.append(re.compile(rf"([\'\"])[{charset}]{{{shortest},}}\1"))
        else:  # a plugin we know nothing of: every line is a candidate
            patterns.append(re.compile(r"^", re.M))
    return patterns


_EXPAND = 64  # the most strings a run of literals is expanded to


def _required_literals(pattern: re.Pattern[str], fold: bool) -> list[set[str]] | None:
    """Sets of strings (lower-cased with `fold`): every match of `pattern` contains one string
    of each set. None when no such set of strings of two characters or more is found."""
    from re import _parser  # type: ignore[attr-defined]

    try:
        found = _required(_parser.parse(pattern.pattern, pattern.flags), _parser, fold)
    except Exception:  # an unusual construct: no prefilter for this pattern
        return None
    found = [need for need in found if min(map(len, need)) >= 2]
    return found or None


def _required(seq: Any, parser: Any, fold: bool) -> list[set[str]]:
    """The necessary-literal sets of a parsed sequence. A stretch of literals, small
    alternations and optional literals (`api_?key`, `(?:_|-|)`) is expanded to the strings
    it can match (`apikey`, `api_key`), up to `_EXPAND` of them; inside anything else the
    best set of each group, alternation and repeat that must match at least once."""
    const = parser
    options: list[set[str]] = []
    run: set[str] = {""}

    def close() -> None:
        nonlocal run
        if min(map(len, run)) > 0:
            options.append(_minimal(run))
        run = {""}

    for op, av in [*seq, (None, None)]:
        alternatives = _strings([(op, av)], parser, fold) if op is not None else None
        if alternatives is not None:
            longer = {a + b for a in run for b in alternatives}
            if len(longer) <= _EXPAND:
                run = longer
            else:
                close()
                run = alternatives
            continue
        close()
        if op is const.SUBPATTERN:
            options += _required(av[-1], parser, fold)
        elif op is const.BRANCH:
            branches = [_best(_required(b, parser, fold)) for b in av[1]]
            if all(branches):
                options.append(set().union(*branches))  # type: ignore[arg-type]
        elif op in (const.MAX_REPEAT, const.MIN_REPEAT) and av[0] >= 1:
            options += _required(av[2], parser, fold)
    return options


def _strings(seq: Any, parser: Any, fold: bool) -> set[str] | None:
    """Every string `seq` can match (lower-cased with `fold`) when it is a few literals; else None."""
    const = parser

    def char(code: int) -> str:
        return chr(code).lower() if fold else chr(code)

    out = {""}
    for op, av in seq:
        alternatives: set[str] | None
        if op is const.LITERAL:
            alternatives = {char(av)}
        elif op is const.SUBPATTERN:
            alternatives = _strings(av[-1], parser, fold)
        elif op is const.BRANCH:
            branches = [_strings(b, parser, fold) for b in av[1]]
            alternatives = None if any(b is None for b in branches) else set().union(*branches)  # type: ignore[arg-type]
        elif op in (const.MAX_REPEAT, const.MIN_REPEAT) and av[1] == 1:  # x? (or x{1})
            inner = _strings(av[2], parser, fold)
            alternatives = None if inner is None else inner | ({""} if av[0] == 0 else set())
        elif op is const.IN and len(av) <= 8 and all(o is const.LITERAL for o, _ in av):
            alternatives = {char(c) for _, c in av}
        else:
            return None
        if alternatives is None:
            return None
        out = {a + b for a in out for b in alternatives}
        if len(out) > _EXPAND:
            return None
    return out


def _minimal(strings: set[str]) -> set[str]:
    """The strings none of the others is part of: containing one of them is the same condition."""
    return {s for s in strings if not any(o != s and o in s for o in strings)}


def _best(options: list[set[str]]) -> set[str] | None:
    """The most selective of several necessary sets: longest shortest string, fewest strings."""
    return max(options, key=lambda o: (min(map(len, o)), -len(o)), default=None)


_LONG_RUN = 16  # a repeat of a character class this long or longer is worth looking for first


class _Run(NamedTuple):
    regex: re.Pattern[str]  # `[class]{n}`
    char: re.Pattern[str]  # `[class]`
    length: int  # n


def _longest_run(pattern: re.Pattern[str]) -> _Run | None:
    """For a pattern whose every match holds `[class]{n}` with n >= _LONG_RUN, that run (a
    cheap test before the pattern); else None."""
    from re import _parser  # type: ignore[attr-defined]

    best: tuple[int, str] | None = None
    try:
        seq = _parser.parse(pattern.pattern, pattern.flags)
    except Exception:
        return None
    for op, av in _must_match(seq, _parser):
        if op in (_parser.MAX_REPEAT, _parser.MIN_REPEAT) and av[0] >= _LONG_RUN and len(av[2]) == 1:
            (item_op, items), = list(av[2])
            cls = _class(item_op, items, _parser)
            if cls is not None and (best is None or av[0] > best[0]):
                best = (av[0], cls)
    if best is None:
        return None
    n, cls = best
    return _Run(re.compile(f"{cls}{{{n}}}", pattern.flags), re.compile(cls, pattern.flags), n)


def _must_match(seq: Any, parser: Any) -> Iterator[tuple[Any, Any]]:
    """The elements of a parsed sequence that every match goes through (groups entered)."""
    for op, av in seq:
        yield op, av
        if op is parser.SUBPATTERN:
            yield from _must_match(av[-1], parser)


_CATEGORIES = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_WORD": r"\w",
               "CATEGORY_NOT_WORD": r"\W", "CATEGORY_SPACE": r"\s", "CATEGORY_NOT_SPACE": r"\S"}


def _class(op: Any, items: Any, parser: Any) -> str | None:
    """A parsed character class (or single category) written back as a regex class; None if unusual."""
    if op is parser.CATEGORY:
        return _CATEGORIES.get(str(items))
    if op is not parser.IN:
        return None
    parts = []
    for kind, value in items:
        if kind is parser.LITERAL:
            parts.append(re.escape(chr(value)))
        elif kind is parser.RANGE:
            parts.append(f"{re.escape(chr(value[0]))}-{re.escape(chr(value[1]))}")
        elif kind is parser.CATEGORY and str(value) in _CATEGORIES:
            parts.append(_CATEGORIES[str(value)])
        elif kind is parser.NEGATE and not parts:
            parts.append("^")
        else:
            return None
    return f"[{''.join(parts)}]"


def _matching_lines(pattern: re.Pattern[str], text: str) -> set[int]:
    lines: set[int] = set()
    pos = line = 0
    while (m := pattern.search(text, pos)) is not None:
        line += text.count("\n", pos, m.start())
        lines.add(line)
        pos = text.find("\n", m.start()) + 1  # the next line: a match that spans lines hides nothing
        if pos == 0:
            break
        line += 1
    return lines


def _count(counts: Counter[str], kind: str) -> str:
    counts[kind] += 1
    return f"[REDACTED:{kind}]"


def _block_path(block: str) -> str | None:
    m = _BLOCK_PATH.match(block)
    return m.group(2).strip() if m else None
