"""Reading `git log`: `parse_block`, which cuts diffs a file at a time with slices, gives
what a plain line-by-line reading with the same rules gives (the reference below)."""

from __future__ import annotations

import random
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
        self._end_file()
        if self.cut_files:
            self.parts.append(f"[... {self.cut_files} more files' diffs cut]\n".encode())
        commit.diff = b"".join(self.parts).decode("utf-8", "replace")
        commit.diff_truncated, commit.diff_files = self.truncated, self.files
        return commit
