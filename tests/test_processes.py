"""`repotune.processes.stop`: a child and everything it forked are gone after it, whatever the child does
with SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from repotune import processes

# A child that starts a grandchild in its own group, writes the grandchild's pid, and then either ignores
# SIGTERM (`ignore`) or exits on it at once, leaving the grandchild behind (`leave`).
CHILD = """
import signal, subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[2], "w").write(str(g.pid))
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(300)
"""


def _start(tmp_path: Path, how: str) -> tuple[subprocess.Popen[bytes], int]:
    pid_file = tmp_path / "grandchild"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, how, str(pid_file)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, int(pid_file.read_text())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent's wait is missing


def _gone(pid: int, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_with_all_it_forked(tmp_path: Path) -> None:
    proc, grandchild = _start(tmp_path, "ignore")
    started = time.monotonic()
    assert processes.stop(proc, 0.5) == -9
    assert time.monotonic() - started >= 0.5  # it was given the grace first
    assert _gone(grandchild)


def test_sweep_ends_what_a_child_left_behind_when_it_exited_in_time(tmp_path: Path) -> None:
    proc, grandchild = _start(tmp_path, "leave")
    assert processes.stop(proc, 10, sweep=True) == 0
    assert _gone(grandchild)


def test_without_sweep_or_group_only_the_child_is_asked_to_stop(tmp_path: Path) -> None:
    proc, grandchild = _start(tmp_path, "leave")
    try:
        assert processes.stop(proc, 10) == 0
        assert _alive(grandchild)  # the child's own business: a server stops its engine itself
    finally:
        os.kill(grandchild, 9)


def test_group_sends_sigterm_to_every_process_of_the_group(tmp_path: Path) -> None:
    proc, grandchild = _start(tmp_path, "leave")
    assert processes.stop(proc, 10, group=True) == 0
    assert _gone(grandchild)  # it had no handler: SIGTERM ended it


def test_stopping_a_child_that_already_exited_returns_its_code(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    proc.wait()
    assert processes.stop(proc, 1, sweep=True) == 3
