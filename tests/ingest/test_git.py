"""Reading `git log`: `parse_block`, which cuts diffs a file at a time with slices, gives
what a plain line-by-line reading with the same rules gives (the reference below)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

from ingest import git
from ingest.git import Caps, Commit, open_repo, parse_block
from tests.ingest.conftest import GitRepo


@pytest.mark.parametrize("caps", [Caps(), Caps(file_bytes=256, commit_bytes=1024),
                                  Caps(file_bytes=300, commit_bytes=301), Caps(file_bytes=97, commit_bytes=5000)])
def test_the_block_parser_cuts_and_reads_as_the_streaming_parser(history: GitRepo, tmp_path, caps: Caps) -> None:
    rng = random.Random(0)
    for i in range(6):  # commits with many files, long lines, lines that end exactly at a cap, no final newline
        files = {f"f{i}_{j}.txt": "".join(("x" * rng.randint(0, 120)) + "\n" for _ in range(rng.randint(1, 40)))
                 for j in range(rng.randint(1, 12))}
        files[f"tail{i}.txt"] = "no newline at the end " * rng.randint(1, 30)
        history.commit(f"Bulk {i}\n\ndiff --git a/not b/a-diff (a message line that looks like one)", files)
    history.commit("Empty", {})  # no files at all
    repo = open_repo(str(history.path), tmp_path / "mirrors")
    heads = [history.git("rev-parse", "main").strip()]
    blocks = list(repo.log_blocks(heads, [], caps))
    assert len(blocks) >= 10
    for block, cut in blocks:
        assert not cut
        fast = parse_block(block, cut, caps)
        slow = next(_line_by_line(iter(block.splitlines(keepends=True)), caps))
        assert (fast.sha, fast.message, fast.files, fast.diff, fast.diff_truncated, fast.diff_files) == (
            slow.sha, slow.message, slow.files, slow.diff, slow.diff_truncated, slow.diff_files), fast.sha
        assert fast.blocks == diff_blocks(fast.diff)


def diff_blocks(diff: str) -> list[str]:
    """A unified diff split at each file's `diff --git` line (any text before the first kept)."""
    if not diff:
        return []
    starts = [m.start() for m in re.finditer(r"^diff --git ", diff, re.M)]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [diff[a:b] for a, b in zip(starts, [*starts[1:], len(diff)], strict=True)]


def _numstat(repo: GitRepo) -> dict[tuple[str, str], tuple[int | None, int | None]]:
    """(sha, path) -> lines added and removed, as `git log --numstat` reports them."""
    out, sha = {}, ""
    for line in repo.git("log", "--all", "--numstat", "-M", "--format=commit %H").splitlines():
        if line.startswith("commit "):
            sha = line.removeprefix("commit ")
        elif line:
            added, removed, path = line.split("\t", 2)
            if " => " in path:  # a rename: git prints "old => new", or "dir/{old => new}/rest"
                braces = re.match(r"(.*)\{(.*) => (.*)\}(.*)", path)
                path = (braces[1] + braces[3] + braces[4]).replace("//", "/") if braces else path.split(" => ")[1]
            out[sha, path] = (None, None) if added == "-" else (int(added), int(removed))
    return out


# the whole history; blocks cut inside the bulk commits' diffs; blocks cut inside their file lists
@pytest.mark.parametrize("block_bytes", [32 << 20, 2500, 600])
def test_line_counts_are_gits_own(tmp_path, block_bytes: int) -> None:
    repo = GitRepo(tmp_path / "counts")
    repo.commit("Start", {"a.txt": "one\ntwo\n--flag\n", "b.py": "x = 1\n", "old.txt": "keep\n" * 30,
                          "gone.txt": "bye\n", "logo.png": b"\x89PNG\0\x01"})
    repo.commit("Awkward lines", {"a.txt": "one\n++counter\n+++ b/not-a-header\n--- a/nor-this\n",
                                  "b.py": "x = 2", "empty.txt": "", "logo.png": b"\x89PNG\0\x02"})
    repo.git("mv", "old.txt", "renamed.txt")
    repo.git("rm", "-q", "gone.txt")
    repo.commit("Rename, delete, edit a renamed file", {"renamed.txt": "keep\n" * 29 + "changed\n"})
    (repo.path / "b.py").chmod(0o755)
    repo.commit("Mode only", {})
    for i in range(3):
        repo.commit(f"Many files {i}", {f"d{i}/f{j}.txt": f"{i} {j}\n" * (j + 1) for j in range(12)})
    expected = _numstat(repo)
    mirror = open_repo(str(repo.path), tmp_path / "mirrors")
    caps = Caps(block_bytes=block_bytes)
    blocks = list(mirror.log_blocks([repo.git("rev-parse", "main").strip()], [], caps))
    assert any(cut for _, cut in blocks) == (block_bytes < 1 << 20)  # the small caps cut the bulk commits
    got, cut_short = {}, set()
    for block, cut in blocks:
        commit = parse_block(block, cut, caps)
        assert commit.blocks == diff_blocks(commit.diff)
        got.update({(commit.sha, f.path): (f.insertions, f.deletions) for f in commit.files})
        if cut:
            cut_short.add(commit.sha)
    # every file read has git's counts; a commit cut short inside its file list lacks the rest
    assert got == {k: v for k, v in expected.items() if k in got}
    assert {k for k in expected if k not in got} <= {k for k in expected if k[0] in cut_short}
    if block_bytes >= 2500:  # cut inside the diffs, if at all: the file lists are whole
        assert got == expected


def _line_by_line(lines: Iterator[bytes], caps: Caps) -> Iterator[Commit]:
    commit: Commit | None = None
    diff = _Diff(caps)
    header: list[bytes] = []
    numstat = 0
    for line in lines:
        if header or line.startswith(b"\x1e"):
            header.append(line)
            joined = b"".join(header)
            if joined.count(b"\x1f") < len(git._FIELDS):
                continue
            if commit is not None:
                yield diff.finish(commit)
            commit, header, numstat = git._header(joined), [], 0
            diff = _Diff(caps)
            continue
        if commit is None:
            continue
        if diff.started or line.startswith(b"diff --git "):
            diff.add(line)
            diff.count(line)
        elif line.startswith(b":"):
            commit.files.append(git._raw(line))
        elif line[:1].isdigit() or line.startswith(b"-\t"):
            if numstat < len(commit.files):
                git._numstat(commit.files[numstat], line)
            numstat += 1
    if commit is not None:
        yield diff.finish(commit)


class _Diff:
    """One commit's diff cut at `caps` as its lines go by: the rules `parse_block` applies with slices."""

    def __init__(self, caps: Caps):
        self.caps = caps
        self.parts: list[bytes] = []
        self.kept = 0  # bytes kept for the commit
        self.file_kept = 0
        self.cut_files = 0
        self.files = 0
        self.truncated = False
        self.started = False
        self.file_cut_noted = True
        self.counts: list[list[int | bool]] = []  # per file: added, removed, in hunks yet, binary

    def count(self, line: bytes) -> None:
        """Lines added and removed, file by file, as `git --numstat` counts them."""
        if line.startswith(b"diff --git "):
            self.counts.append([0, 0, False, False])
        elif line.startswith(b"@@ "):
            self.counts[-1][2] = True
        elif self.counts[-1][2] and line[:1] in (b"+", b"-"):
            self.counts[-1][0 if line[:1] == b"+" else 1] += 1
        elif line.startswith(b"Binary files "):
            self.counts[-1][3] = True

    def add(self, line: bytes) -> None:
        self.started = True
        if line.startswith(b"diff --git "):
            self.files += 1
            self._end_file()
            self.file_kept, self.file_cut_noted = 0, False
            if self.kept >= self.caps.commit_bytes:
                self.cut_files += 1
                self.truncated = True
                return
        elif self.kept >= self.caps.commit_bytes:
            return
        room = min(self.caps.file_bytes - self.file_kept, self.caps.commit_bytes - self.kept)
        if room <= 0:
            self.truncated = True
            return
        piece = line if len(line) <= room else line[:room] + b"\n"
        self.parts.append(piece)
        self.kept += len(piece)
        self.file_kept += len(piece)
        if len(piece) < len(line):
            self.truncated = True

    def _end_file(self) -> None:
        if self.file_kept >= self.caps.file_bytes and not self.file_cut_noted:
            self.parts.append(git.FILE_CUT)
            self.file_cut_noted = True

    def finish(self, commit: Commit) -> Commit:
        if not any(f.insertions is not None for f in commit.files):  # no numstat lines: counts from the patch
            for change, (added, removed, _, binary) in zip(commit.files, self.counts, strict=False):
                change.insertions, change.deletions = (None, None) if binary else (int(added), int(removed))
        self._end_file()
        if self.cut_files:
            self.parts.append(f"[... {self.cut_files} more files' diffs cut]\n".encode())
        commit.diff = b"".join(self.parts).decode("utf-8", "replace")
        commit.diff_truncated, commit.diff_files = self.truncated, self.files
        return commit
