"""Secrets out before anything is stored: detect-secrets' plugins and filters, line by line.

Every text ingest stores (diffs, messages, pull request bodies and comments, files and
docs) passes through `Scanner.redact_many` (or `redact_diffs`) first. Each secret found is replaced by a marker
naming its kind (`[REDACTED:aws-key]`) and counted. detect-secrets brings the pattern
plugins (AWS, GitHub, Slack, OpenAI, private keys, passwords in URLs, keyword
assignments, …), its entropy plugins (base64 and hex strings above a Shannon entropy
limit) and its false-positive filters (UUIDs, templates, sequential strings).

Three things are added around it:
- a private key is redacted as a whole block, BEGIN to END, not just its first line;
- files that are secrets by nature (`.env`, key and certificate stores) are dropped
  whole: `is_secret_file` tells ingest not to store them at all;
- a pre-filter made from the plugins' own patterns: each pattern (a regex plugin's
  denylist, the keyword plugin's keywords, an entropy plugin's quoted-string pattern
  with the shortest length that can reach its entropy limit) runs once over the whole
  text, and only the lines where one matches go through detect-secrets, line by line,
  with its filters. A plugin can only report a line its own pattern matches, so nothing
  is missed; and most lines match none, where detect-secrets' per-line machinery costs
  a hundred times the regex.
"""

from __future__ import annotations

import bisect
import contextlib
import fnmatch
import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

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
_DIFF_PREFIX = re.compile(r"^[+\- ]", re.M)


@dataclass
class Redacted:
    text: str
    counts: Counter[str] = field(default_factory=Counter)


_SECRET_FILE = re.compile("|".join(fnmatch.translate(p) for p in SECRET_FILES))


def is_secret_file(path: str) -> bool:
    return _SECRET_FILE.match(PurePosixPath(path).name) is not None


def kind_of(secret_type: str) -> str:
    return KINDS.get(secret_type) or re.sub(r"[^a-z0-9]+", "-", secret_type.lower()).strip("-")


class Scanner:
    """detect-secrets with every plugin but the disabled ones, set up once per process."""

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

    def close(self) -> None:
        self._settings.close()

    def candidates(self, text: str) -> list[int]:
        """0-based numbers of the lines where some plugin's pattern matches."""
        starts = [0, *(m.end() for m in re.finditer("\n", text))]
        lines: set[int] = set()
        hinted = self._prefilter.hinted_lines(text.lower(), starts)
        for pattern, hints in self._prefilter.patterns:
            if hints is None:
                lines.update(_matching_lines(pattern, text, starts))
                continue
            # a line must hold a literal of every set the pattern requires
            maybe = set.intersection(*(set().union(*(hinted.get(h, ()) for h in need)) for need in hints))
            for line in sorted(maybe):
                end = starts[line + 1] if line + 1 < len(starts) else len(text)
                if pattern.search(text, starts[line], end):
                    lines.add(line)
        return sorted(lines)

    def redact_many(self, texts: list[tuple[str, str, bool]]) -> list[Redacted]:
        """Each (text, filename, is_diff) with every secret found replaced by
        `[REDACTED:<kind>]`, and the counts. The prefilter runs over all of them joined, so
        its fixed cost per pattern is paid once, not once per text."""
        outs = [Redacted(t) for t, _, _ in texts]
        for out in outs:
            if "PRIVATE KEY" in out.text:
                out.text = _PRIVATE_KEY.sub(lambda m, o=out: _count(o.counts, "private-key"), out.text)  # type: ignore[misc]
        bodies = [_DIFF_PREFIX.sub("", o.text) if diff else o.text for o, (_, _, diff) in zip(outs, texts, strict=True)]
        first = list(itertools.accumulate((b.count("\n") + 1 for b in bodies), initial=0))  # each text's first line
        wanted: dict[int, list[int]] = {}
        for line in self.candidates("\n".join(bodies)):
            i = bisect.bisect_right(first, line) - 1
            wanted.setdefault(i, []).append(line - first[i])
        for i, numbers in wanted.items():
            self._replace(outs[i], bodies[i], numbers, texts[i][1])
        return outs

    def _replace(self, out: Redacted, body: str, numbers: list[int], filename: str) -> None:
        lines, bodies = out.text.split("\n"), body.split("\n")
        found: dict[int, set[tuple[str, str]]] = {}
        for secret in self._scan_lines([(n + 1, bodies[n]) for n in numbers], filename):
            if secret.secret_value:
                found.setdefault(secret.line_number, set()).add((secret.secret_value, kind_of(secret.type)))
        for number, secrets in found.items():
            line = lines[number - 1]
            for value, kind in sorted(secrets, key=lambda s: -len(s[0])):  # longest first: no partial leftovers
                if value in line:
                    line = line.replace(value, f"[REDACTED:{kind}]")
                    out.counts[kind] += 1
            lines[number - 1] = line
        out.text = "\n".join(lines)

    def redact_diffs(self, diffs: list[str]) -> list[Redacted]:
        """Commits' diffs: blocks of secret files dropped whole, the rest scanned as their file."""
        outs = [Redacted("") for _ in diffs]
        blocks: list[tuple[int, str, str]] = []  # (diff, block, path)
        for d, diff in enumerate(diffs):
            for block in diff_blocks(diff):
                blocks.append((d, block, _block_path(block) or "diff.txt"))
        done = self.redact_many([(block, path, True) for d, block, path in blocks if not is_secret_file(path)])
        scanned = iter(done)
        for d, _, path in blocks:
            if is_secret_file(path):
                outs[d].text += f"diff --git a/{path} b/{path}\n[REDACTED:secret-file] (not stored)\n"
                outs[d].counts["secret-file"] += 1
            else:
                part = next(scanned)
                outs[d].text += part.text
                outs[d].counts.update(part.counts)
        return outs


class _Prefilter:
    """Each plugin's patterns, and for each the literals one of which every match contains.

    The literals of all patterns are found in one pass over the lower-cased text; a
    pattern then runs only on the lines holding one of its literals (most lines hold
    none). A pattern with no such literal runs over the whole text.
    """

    def __init__(self, plugins: list[Any]):
        self.patterns = [(p, _required_literals(p)) for p in _plugin_patterns(plugins)]
        hints = sorted({h for _, needs in self.patterns for need in needs or () for h in need}, key=len, reverse=True)
        self.hints = re.compile("|".join(map(re.escape, hints))) if hints else None
        # a match of "password" is also one of "pass": every hint inside another counts too
        self.implied = {h: [o for o in hints if o in h] for h in hints}

    def hinted_lines(self, lowered: str, starts: list[int]) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        if self.hints is None:
            return found
        pos = 0
        while (m := self.hints.search(lowered, pos)) is not None:
            line = bisect.bisect_right(starts, m.start()) - 1
            for hint in self.implied[m.group()]:
                found.setdefault(hint, set()).add(line)
            pos = m.start() + 1  # overlapping: "passkey" holds "pass" and "skey"
        return found


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


def _required_literals(pattern: re.Pattern[str]) -> list[set[str]] | None:
    """Sets of lower-cased strings: every match of `pattern` contains one string of each set.
    None when no such set of strings of two characters or more is found."""
    from re import _parser  # type: ignore[attr-defined]

    try:
        found = _required(_parser.parse(pattern.pattern, pattern.flags), _parser)
    except Exception:  # an unusual construct: no prefilter for this pattern
        return None
    found = [need for need in found if min(map(len, need)) >= 2]
    return found or None


def _required(seq: Any, parser: Any) -> list[set[str]]:
    """The necessary-literal sets of a parsed sequence: its literal runs, and the best set
    of each group, alternation and repeat that must match at least once."""
    const = parser
    options: list[set[str]] = []
    run: list[str] = []
    for op, av in [*seq, (None, None)]:
        if op is const.LITERAL:
            run.append(chr(av).lower())
            continue
        if run:
            options.append({"".join(run)})
            run = []
        if op is const.SUBPATTERN:
            options += _required(av[-1], parser)
        elif op is const.BRANCH:
            branches = [_best(_required(b, parser)) for b in av[1]]
            if all(branches):
                options.append(set().union(*branches))  # type: ignore[arg-type]
        elif op in (const.MAX_REPEAT, const.MIN_REPEAT) and av[0] >= 1:
            options += _required(av[2], parser)
    return options


def _best(options: list[set[str]]) -> set[str] | None:
    """The most selective of several necessary sets: longest shortest string, fewest strings."""
    return max(options, key=lambda o: (min(map(len, o)), -len(o)), default=None)


def _matching_lines(pattern: re.Pattern[str], text: str, starts: list[int]) -> set[int]:
    lines: set[int] = set()
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        line = bisect.bisect_right(starts, m.start()) - 1
        lines.add(line)
        if line + 1 >= len(starts):
            break
        pos = starts[line + 1]  # the next line: a match that spans lines hides nothing
    return lines


def _count(counts: Counter[str], kind: str) -> str:
    counts[kind] += 1
    return f"[REDACTED:{kind}]"


def diff_blocks(diff: str) -> list[str]:
    """A unified diff split at each file's `diff --git` line (any text before the first kept)."""
    starts = [m.start() for m in re.finditer(r"^diff --git ", diff, re.M)]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [diff[a:b] for a, b in zip(starts, [*starts[1:], len(diff)], strict=True)]


def _block_path(block: str) -> str | None:
    m = re.match(r"diff --git a/(.*?) b/(.*)", block)
    return m.group(2).strip() if m else None
