"""Secrets out before anything is stored: detect-secrets' plugins and filters, line by line.

Every text ingest stores (diffs, messages, pull request bodies and comments, files and
docs) passes through `Scanner.redact` first. Each secret found is replaced by a marker
naming its kind (`[REDACTED:aws-key]`) and counted. detect-secrets brings the pattern
plugins (AWS, GitHub, Slack, OpenAI, private keys, passwords in URLs, keyword
assignments, …), its entropy plugins (base64 and hex strings above a Shannon entropy
limit) and its false-positive filters (UUIDs, templates, sequential strings).

Three things are added around it:
- a private key is redacted as a whole block, BEGIN to END, not just its first line;
- files that are secrets by nature (`.env`, key and certificate stores) are dropped
  whole: `is_secret_file` tells ingest not to store them at all;
- a cheap pre-filter sends only lines that could hold a secret to the plugins (a run of
  16 or more token characters, or a credential word, `://`, or `BEGIN`): most lines of a
  diff have neither, and the plugins cost far more per line than the filter.
"""

from __future__ import annotations

import contextlib
import fnmatch
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
_CANDIDATE = re.compile(
    r"[A-Za-z0-9+/=_.\-]{16,}|://|BEGIN|key|secret|token|passw|pwd|auth|cred|private",
    re.I,
)
# In a unified diff, content lines start with one of these; the prefix is not scanned.
_DIFF_PREFIX = ("+", "-", " ")


@dataclass
class Redacted:
    text: str
    counts: Counter[str] = field(default_factory=Counter)


def is_secret_file(path: str) -> bool:
    name = PurePosixPath(path).name
    return any(fnmatch.fnmatch(name, pattern) for pattern in SECRET_FILES)


def kind_of(secret_type: str) -> str:
    return KINDS.get(secret_type) or re.sub(r"[^a-z0-9]+", "-", secret_type.lower()).strip("-")


class Scanner:
    """detect-secrets with every plugin but the disabled ones, set up once per process."""

    def __init__(self) -> None:
        from detect_secrets.core import scan
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.settings import transient_settings

        names = [plugin.__name__ for plugin in get_mapping_from_secret_type_to_class().values()]
        plugins = [{"name": name} for name in names if name not in DISABLED_PLUGINS]
        self._settings = contextlib.ExitStack()
        self._settings.enter_context(transient_settings({"plugins_used": plugins}))
        # The line-based scan that `detect-secrets scan` runs on a file, filters included;
        # its public wrapper wants a file on disk.
        self._scan_lines = scan._process_line_based_plugins

    def close(self) -> None:
        self._settings.close()

    def redact(self, text: str, filename: str = "text.txt", diff: bool = False) -> Redacted:
        """`text` with every secret found replaced by `[REDACTED:<kind>]`, and the counts."""
        out = Redacted(text)
        if not text:
            return out
        out.text = _PRIVATE_KEY.sub(lambda m: _count(out.counts, "private-key"), out.text)
        lines = out.text.split("\n")
        candidates = []
        for i, line in enumerate(lines):
            body = line[1:] if diff and line.startswith(_DIFF_PREFIX) else line
            if _CANDIDATE.search(body):
                candidates.append((i + 1, body))
        if not candidates:
            return out
        found: dict[int, set[tuple[str, str]]] = {}
        for secret in self._scan_lines(candidates, filename):
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
        return out

    def redact_diff(self, diff: str) -> Redacted:
        """A commit's diff: blocks of secret files dropped whole, the rest scanned as their file."""
        out = Redacted("")
        parts = []
        for block in diff_blocks(diff):
            path = _block_path(block)
            if path and is_secret_file(path):
                parts.append(f"diff --git a/{path} b/{path}\n[REDACTED:secret-file] (not stored)\n")
                out.counts["secret-file"] += 1
                continue
            redacted = self.redact(block, path or "diff.txt", diff=True)
            out.counts.update(redacted.counts)
            parts.append(redacted.text)
        out.text = "".join(parts)
        return out

    def __getstate__(self) -> Any:  # pragma: no cover - a Scanner is made in each worker, never sent
        raise TypeError("make a Scanner in each process")


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
