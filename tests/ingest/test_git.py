"""Reading `git log`: the block parser (used on the default path) matches the streaming one."""

from __future__ import annotations

import random

import pytest

from ingest.git import Caps, _parse_log, open_repo, parse_block
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
        slow = next(_parse_log(iter(block.splitlines(keepends=True)), caps))
        assert (fast.sha, fast.message, fast.files, fast.diff, fast.diff_truncated, fast.diff_files) == (
            slow.sha, slow.message, slow.files, slow.diff, slow.diff_truncated, slow.diff_files), fast.sha
