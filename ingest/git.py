"""Reading a git repository with git itself: mirrors of remote ones, and history as records.

Everything here runs the git CLI and reads its output; nothing parses git's object
format. History is read in one streamed `git log --raw -p` pass (the same work as
`git log -p`, line counts taken from the patch), commit by commit, so a 10,000-commit history or a 200 MB diff never
sits in memory: diffs are cut per file and per commit while they stream by. A remote
repository is kept as a bare mirror under `paths.data_dir/repos` and fetched on each run.

Objects can be missing (a partial or shallow clone, a copy without some large blobs).
The streamed pass then fails; the commits are read again with `--raw` only (which needs
trees, not blobs), the missing blobs are found with `git cat-file --batch-check`, and
each affected commit's diff is made without those files, which are recorded as skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Each commit's header in `git log` output: a record separator at the start of a line,
# then fields split by unit separators (a patch line never starts with 0x1e).
_FIELDS = ("sha", "parents", "author_name", "author_email", "authored_at", "committer_name", "committed_at", "message")
LOG_FORMAT = "%x1e" + "%x1f".join(("%H", "%P", "%an", "%ae", "%aI", "%cn", "%cI", "%B")) + "%x1f"
# Never prompt for credentials, never fetch a partial clone's missing objects behind our back.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_NO_LAZY_FETCH": "1", "LC_ALL": "C", "GIT_PAGER": "cat"}
_MISSING = re.compile(rb"unable to read|missing blob|bad object|does not exist|is corrupt|not a valid object")


class GitError(Exception):
    """git could not do what was asked; the message says what and why."""


class MissingObjects(GitError):
    """The history refers to objects the repository does not have."""


@dataclass
class FileChange:
    path: str
    old_path: str | None
    status: str  # A, M, D, R, C, T
    old_blob: str
    new_blob: str
    insertions: int | None = None  # None: binary
    deletions: int | None = None
    skipped: str | None = None  # why its diff is not stored

    @property
    def binary(self) -> bool:
        return self.insertions is None and self.skipped is None


@dataclass
class Commit:
    sha: str
    parents: list[str]
    author_name: str
    author_email: str
    authored_at: str
    committer_name: str
    committed_at: str
    message: str
    files: list[FileChange] = field(default_factory=list)
    diff: str = ""
    blocks: list[str] = field(default_factory=list)  # the diff a file at a time, each from its `diff --git` line
    diff_truncated: bool = False
    diff_files: int = 0  # files whose diff git's output reached


@dataclass
class Caps:
    file_bytes: int = 16_000
    commit_bytes: int = 64_000
    block_bytes: int = 32 << 20  # a commit's raw log output kept: file list and the start of the diff


# Held while git is started, and while the ingest workers are forked (`workers.Pool`):
# sources run in threads, and a worker forked while git starts would inherit the pipe
# through which `Popen` learns that git is running (and git's input, while it is fed),
# so the start (or git) would wait for the worker to exit. The workers fork before
# anything streams into git (`cat-file --batch`).
SPAWNING = threading.Lock()


class Repo:
    """A git repository on disk (a work tree or a bare mirror)."""

    def __init__(self, path: Path):
        self.path = path

    def run(self, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
        code, out, err = _run(["git", "-C", str(self.path), *args], input)
        if check and code != 0:
            raise _error(args, err)
        return out

    def text(self, *args: str) -> str:
        return self.run(*args).decode("utf-8", "replace").strip()

    def default_branch(self) -> str:
        """The branch HEAD names (a mirror's HEAD is the remote's default branch)."""
        ref = self.run("symbolic-ref", "-q", "HEAD", check=False).decode().strip()
        if ref.startswith("refs/heads/"):
            return ref.removeprefix("refs/heads/")
        raise GitError(f"{self.path}: HEAD is not on a branch; name the branches in ingest.branches")

    def heads(self, branches: list[str]) -> dict[str, str]:
        """Each branch's commit; a branch that does not exist is an error naming it."""
        out = {}
        for branch in branches:
            sha = self.run("rev-parse", "-q", "--verify", f"refs/heads/{branch}^{{commit}}", check=False)
            if not sha.strip():
                raise GitError(f"{self.path}: no branch {branch!r}")
            out[branch] = sha.decode().strip()
        return out

    def has_commit(self, sha: str) -> bool:
        return bool(self.run("rev-parse", "-q", "--verify", f"{sha}^{{commit}}", check=False).strip())

    def count(self, heads: Iterable[str], done: Iterable[str]) -> int:
        return int(self.text("rev-list", "--count", *heads, "--not", *done, "--"))

    def missing_blobs(self, blobs: Iterable[str]) -> set[str]:
        wanted = "".join(f"{b}\n" for b in set(blobs) if b and set(b) != {"0"})
        if not wanted:
            return set()
        out = self.run("cat-file", "--batch-check", input=wanted.encode())
        return {line.split()[0].decode() for line in out.splitlines() if line.endswith(b" missing")}

    def log_blocks(self, heads: list[str], done: list[str], caps: Caps) -> Iterator[tuple[bytes, bool]]:
        """`log`'s output unparsed, one commit's bytes at a time, so that workers can parse it.

        A block is cut (and says so) beyond `caps.block_bytes`: its header and file list
        come first and are kept, and the diff kept from it is smaller than that anyway.
        """
        # No --numstat: git would diff every file a second time to count its lines (a third
        # of its time); the counts come from the patch instead (`parse_block`), and only a
        # block cut short asks git for its commit's counts.
        args = ["log", "--reverse", "--topo-order", "--no-abbrev", "--raw", "-p", "-M",
                "--no-color", "--no-ext-diff", "--no-textconv", f"--format={LOG_FORMAT}", *heads, "--not", *done, "--"]
        merges = _Merges(self.merge_changes(heads, done, caps))
        for block, cut in _blocks(self._stream(args), caps.block_bytes):
            if _is_merge(block):  # `log -p` gives a merge no files: its first parent's diff does
                block = block.rstrip(b"\n") + b"\n" + merges.take(block[1:41].decode())
            yield (self._with_numstat(block) if cut else block), cut

    def merge_changes(self, heads: list[str], done: list[str], caps: Caps, numstat: bool = True
                      ) -> Iterator[tuple[str, bytes]]:
        """(sha, `--raw` and `--numstat` lines) of each merge's change against its first
        parent (what the merged branch brought in), for all merges in one `git log`, in
        the order `log_blocks` gives them. No patch: its lines are the merged commits'."""
        args = ["log", "--merges", "--diff-merges=first-parent", "--reverse", "--topo-order", "--no-abbrev",
                "--raw", *(["--numstat"] if numstat else []), "-M", "--no-color", "--no-ext-diff", "--no-textconv",
                "--format=%x1e%H", *heads, "--not", *done, "--"]
        for block, _ in _blocks(self._stream(args), caps.block_bytes):
            yield block[1:41].decode(), block[41:].lstrip(b"\n")

    def _with_numstat(self, block: bytes) -> bytes:
        """A cut block with its commit's line counts from git, before its diff: files whose
        patch was cut off still get theirs."""
        numstat = self.run("diff-tree", "--root", "--no-commit-id", "-r", "--numstat", "-M", "--no-ext-diff",
                           "--no-textconv", block[1:41].decode())
        at = block.find(b"\ndiff --git ")
        return block + b"\n" + numstat if at < 0 else block[: at + 1] + numstat + block[at + 1 :]

    def log_without(self, heads: list[str], done: list[str], caps: Caps) -> Iterator[Commit]:
        """As `log`, when blobs are missing: their files are skipped and marked, the rest diffed."""
        args = ["log", "--reverse", "--topo-order", "--no-abbrev", "--raw", "-M", "--no-color",
                "--diff-merges=first-parent", f"--format={LOG_FORMAT}", *heads, "--not", *done, "--"]
        commits = [parse_block(block, cut, caps) for block, cut in _blocks(self._stream(args), caps.block_bytes)]
        missing = self.missing_blobs(b for c in commits for f in c.files for b in (f.old_blob, f.new_blob))
        for commit in commits:
            lost = {f.path for f in commit.files if {f.old_blob, f.new_blob} & missing}
            for f in commit.files:
                if f.path in lost:
                    f.skipped = "missing object"
            if len(commit.parents) <= 1:  # merges have no diff in `git log -p` either
                self._diff_one(commit, lost, caps)
            else:
                self._count_merge(commit, lost)
            yield commit

    def _diff_one(self, commit: Commit, lost: set[str], caps: Caps) -> None:
        exclude = [f":(exclude,literal){p}" for p in sorted(lost)]
        args = ["diff-tree", "--root", "--no-commit-id", "-r", "--raw", "--no-abbrev", "--numstat", "-p", "-M",
                "--no-color", "--no-ext-diff", "--no-textconv", commit.sha, "--", ".", *exclude]
        header = f"\x1e{commit.sha}\x1f\x1f\x1f\x1f\x1f\x1f\x1f\x1f\n".encode()
        parsed = parse_block(header + self.run(*args), False, caps)
        stats = {f.path: f for f in parsed.files}
        for f in commit.files:
            if f.path in stats:
                f.insertions, f.deletions = stats[f.path].insertions, stats[f.path].deletions
        commit.diff, commit.blocks, commit.diff_truncated = parsed.diff, parsed.blocks, parsed.diff_truncated

    def _count_merge(self, commit: Commit, lost: set[str]) -> None:
        """A merge's line counts against its first parent, without the files whose blobs are missing."""
        exclude = [f":(exclude,literal){p}" for p in sorted(lost)]
        out = self.run("diff-tree", "-r", "--raw", "--no-abbrev", "--numstat", "-M", "--no-ext-diff",
                       "--no-textconv", commit.parents[0], commit.sha, "--", ".", *exclude)
        header = f"\x1e{commit.sha}\x1f\x1f\x1f\x1f\x1f\x1f\x1f\x1f\n".encode()
        stats = {f.path: f for f in parse_block(header + out, False, Caps()).files}
        for f in commit.files:
            if f.path in stats:
                f.insertions, f.deletions = stats[f.path].insertions, stats[f.path].deletions

    def _stream(self, args: list[str]) -> Iterator[bytes]:
        """git's output in large chunks; its exit status checked at the end."""
        with tempfile.TemporaryFile() as stderr:
            with SPAWNING:
                proc = subprocess.Popen(
                    ["git", "-c", "core.quotePath=false", "-C", str(self.path), *args],
                    stdout=subprocess.PIPE, stderr=stderr, env=_env(),
                )
            assert proc.stdout is not None
            try:
                while chunk := proc.stdout.read(1 << 20):
                    yield chunk
            finally:
                proc.stdout.close()
                code = proc.wait()
            if code != 0:
                stderr.seek(0)
                raise _error(args, stderr.read())

    def files_at(self, commit: str) -> list[tuple[str, str, int]]:
        """(path, blob, size) of every file in `commit`'s tree; size -1 when git cannot read the blob."""
        out = self.run("ls-tree", "-r", "-l", "-z", "--full-tree", commit)
        files = []
        for entry in out.split(b"\0"):
            if not entry:
                continue
            meta, _, path = entry.partition(b"\t")
            mode, kind, blob, size = meta.split()
            if kind == b"blob" and mode != b"120000":  # not symlinks, not submodules
                files.append((path.decode("utf-8", "replace"), blob.decode(), int(size) if size.isdigit() else -1))
        return files

    def blobs(self, ids: list[str]) -> Iterator[tuple[str, bytes | None]]:
        """The contents of blobs by id, in order, through one `cat-file --batch`; None if missing."""
        with SPAWNING:
            proc = subprocess.Popen(
                ["git", "-C", str(self.path), "cat-file", "--batch"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(),
            )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for blob in ids:
                proc.stdin.write(f"{blob}\n".encode())
                proc.stdin.flush()
                header = proc.stdout.readline().split()
                if len(header) < 3 or header[1] == b"missing":
                    yield blob, None
                    continue
                data = proc.stdout.read(int(header[2]))
                proc.stdout.read(1)  # the newline after each object
                yield blob, data
        finally:
            proc.stdin.close()
            proc.stdout.close()
            proc.wait()


def open_repo(spec: str, mirrors: Path, fetch: bool = True) -> Repo:
    """A local repository as it is, or a remote one through its mirror (cloned or fetched)."""
    if not is_url(spec):
        path = Path(spec)
        if not path.exists():
            raise GitError(f"{spec}: no such folder")
        try:
            top = Repo(path).text("rev-parse", "--absolute-git-dir")
        except GitError:
            raise GitError(f"{spec} is not a git repository") from None
        return Repo(Path(top).parent if Path(top).name == ".git" else Path(top))
    mirror = mirrors / mirror_name(spec)
    if not (mirror / "HEAD").exists():
        mirrors.mkdir(parents=True, exist_ok=True)
        tmp = mirror.with_name(mirror.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        code, _, err = _run(["git", "clone", "--mirror", "--quiet", spec, str(tmp)])
        if code != 0:
            raise GitError(f"cannot clone {redact_url(spec)}: {_last_line(err)}")
        tmp.rename(mirror)
    elif fetch:
        code, _, err = _run(["git", "-C", str(mirror), "fetch", "--prune", "--quiet", "origin"])
        if code != 0:
            raise GitError(f"cannot fetch {redact_url(spec)}: {_last_line(err)}")
    return Repo(mirror)


def _run(argv: list[str], input: bytes | None = None) -> tuple[int, bytes, bytes]:
    """Run git to the end: its exit code, output and errors."""
    if input is None:
        with SPAWNING:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        out, err = proc.communicate()
    else:  # held throughout: a worker forked meanwhile would keep git's input open
        with SPAWNING:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=_env())
            out, err = proc.communicate(input)
    return proc.returncode, out, err


def is_url(spec: str) -> bool:
    return "://" in spec or bool(re.match(r"^[\w.-]+@[\w.-]+:", spec))


def mirror_name(url: str) -> str:
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:40]
    return f"{tail}-{hashlib.sha256(url.encode()).hexdigest()[:10]}.git"


def redact_url(url: str) -> str:
    """A URL without any credentials in it, for messages."""
    return re.sub(r"//[^/@]*@", "//", url)


def _env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def _last_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return redact_url(lines[-1].strip()) if lines else "git failed"


def _error(args: Iterable[str], stderr: bytes) -> GitError:
    message = f"git {next(iter(args), '')}: {_last_line(stderr)}"
    return MissingObjects(message) if _MISSING.search(stderr) else GitError(message)


# --- reading `git log --raw -p` ------------------------------------------------


def _is_merge(block: bytes) -> bool:
    """Whether a `log_blocks` block is a merge's: its parents field (after the sha) holds a space."""
    end = block.find(b"\x1f", 42)
    return end > 0 and b" " in block[42:end]


class _Merges:
    """Merges' changes (`Repo.merge_changes`) taken by sha as `log_blocks` meets them: the
    two walks give merges in the same order, so this holds none, or the few out of step."""

    def __init__(self, changes: Iterator[tuple[str, bytes]]):
        self._changes = changes
        self._ahead: dict[str, bytes] = {}

    def take(self, sha: str) -> bytes:
        if sha in self._ahead:
            return self._ahead.pop(sha)
        for found, changes in self._changes:
            if found == sha:
                return changes
            self._ahead[found] = changes
        return b""


def _blocks(chunks: Iterable[bytes], block_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """`git log` output split into commits' bytes, each cut (and marked) beyond `block_bytes`."""
    current, cut = bytearray(), False

    def add(part: bytes) -> None:
        nonlocal cut
        room = block_bytes - len(current)
        current.extend(part[: max(room, 0)])
        cut = cut or len(part) > room

    pending = b""
    for chunk in chunks:
        data = pending + chunk
        start = 0
        while (i := data.find(b"\n\x1e", start)) != -1:  # a commit header starts a line
            add(data[start : i + 1])
            if current:
                yield bytes(current), cut
            current, cut = bytearray(), False
            start = i + 1
        rest = data[start:]
        pending = b"\n" if rest.endswith(b"\n") else b""  # it may precede the next header
        add(rest[: len(rest) - len(pending)])
    add(pending)
    if current:
        yield bytes(current), cut


def parse_block(block: bytes, cut: bool, caps: Caps) -> Commit:
    """One commit from its bytes of `git log` output (see `Repo.log_blocks`). The diff is
    cut a file at a time, with slices: a long history's diffs are most of its bytes."""
    end = -1
    for _ in _FIELDS:  # the header: every field ends with a unit separator, the message too
        end = block.find(b"\x1f", end + 1)
        if end < 0:  # a header cut short (a block cut inside its message): what there is of it
            return _header(block)
    end += 1
    commit = _header(block[:end])
    start = block.find(b"\ndiff --git ", end - 1)
    meta, diff = (block[end:], b"") if start < 0 else (block[end: start + 1], block[start + 1:])
    numstat = 0
    for line in meta.splitlines():
        if line.startswith(b":"):
            if (change := _raw(line)) is not None:  # None: the line a cut block ends in
                commit.files.append(change)
        elif line[:1].isdigit() or line.startswith(b"-\t"):
            if numstat < len(commit.files):
                _numstat(commit.files[numstat], line)
            numstat += 1
    counts = _cap_diff(commit, diff, caps)
    if not numstat:  # git's output holds a patch per file, in the order of its file list
        for change, (insertions, deletions) in zip(commit.files, counts, strict=False):
            change.insertions, change.deletions = insertions, deletions
    if cut:
        commit.diff_truncated = True
        unseen = len(commit.files) - commit.diff_files
        if unseen > 0:
            note = f"[... {unseen} more files' diffs cut]\n"
            commit.diff += note
            commit.blocks = [*commit.blocks[:-1], commit.blocks[-1] + note] if commit.blocks else [note]
    return commit


def _cap_diff(commit: Commit, diff: bytes, caps: Caps) -> list[tuple[int | None, int | None]]:
    """`diff` cut at `caps` per file and per commit: a file's lines while they fit, the line
    that crosses the cap cut short, and a note of what was cut. Returns each file's lines
    added and removed, counted in its whole patch as `git --numstat` counts them (None
    for a binary file)."""
    parts: list[bytes] = []  # a file's each: what is kept of its patch, and the note if it was cut
    counts: list[tuple[int | None, int | None]] = []
    kept = cut_files = files = 0
    truncated = False
    starts = [0] if diff else []
    while diff and (i := diff.find(b"\ndiff --git ", starts[-1])) != -1:
        starts.append(i + 1)
    for a, b in zip(starts, [*starts[1:], len(diff)] if starts else [], strict=True):
        files += 1
        hunks = diff.find(b"\n@@ ", a, b)  # after the header: a line there starting with +++ is content
        if hunks >= 0:
            counts.append((diff.count(b"\n+", hunks, b), diff.count(b"\n-", hunks, b)))
        else:
            binary = diff.find(b"\nBinary files ", a, b) >= 0
            counts.append((None, None) if binary else (0, 0))
        if kept >= caps.commit_bytes:
            cut_files += 1
            truncated = True
            continue
        room = min(caps.file_bytes, caps.commit_bytes - kept)
        if b - a <= room:
            parts.append(diff[a:b])
            kept += b - a
            continue
        piece = diff[a: a + room]
        if not piece.endswith(b"\n"):
            piece += b"\n"
        kept += len(piece)
        truncated = True
        parts.append(piece + FILE_CUT if len(piece) >= caps.file_bytes else piece)
    if cut_files:
        parts[-1] += f"[... {cut_files} more files' diffs cut]\n".encode()
    # Each file's part decoded alone reads as the whole would: parts end at line breaks.
    commit.blocks = [part.decode("utf-8", "replace") for part in parts]
    commit.diff = "".join(commit.blocks)
    commit.diff_truncated, commit.diff_files = truncated, files
    return counts


FILE_CUT = b"[... the rest of this file's diff is cut]\n"


def _header(data: bytes) -> Commit:
    values = [*data.lstrip(b"\x1e").split(b"\x1f"), *[b""] * len(_FIELDS)][: len(_FIELDS)]
    text = dict(zip(_FIELDS, (v.decode("utf-8", "replace") for v in values), strict=True))
    return Commit(
        sha=text["sha"].strip(),
        parents=text["parents"].split(),
        author_name=text["author_name"],
        author_email=text["author_email"],
        authored_at=text["authored_at"],
        committer_name=text["committer_name"],
        committed_at=text["committed_at"],
        message=text["message"].strip(),
    )


def _raw(line: bytes) -> FileChange | None:
    # ":100644 100644 <old> <new> M\tpath" or ":… R086\told\tnew"
    meta, *paths = line.rstrip(b"\n").split(b"\t")
    fields = meta.split()
    if len(fields) != 5 or not paths:
        return None
    _, _, old_blob, new_blob, status = fields
    names = [_unquote(p) for p in paths]
    return FileChange(
        path=names[-1], old_path=names[0] if len(names) > 1 else None, status=status[:1].decode(),
        old_blob=old_blob.decode(), new_blob=new_blob.decode(),
    )


def _numstat(change: FileChange, line: bytes) -> None:
    added, deleted, _ = line.split(b"\t", 2)
    if added != b"-":
        change.insertions, change.deletions = int(added), int(deleted)


def _unquote(path: bytes) -> str:
    """git's C-quoted path ("a\\tb") back to text; unquoted paths pass through."""
    if path.startswith(b'"') and path.endswith(b'"'):
        path = path[1:-1].decode("unicode_escape").encode("latin-1")
    return path.decode("utf-8", "replace")
