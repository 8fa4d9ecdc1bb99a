"""The worker pool when sources run side by side, in threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ingest import workers
from repotune import models

# One thread starts git over and over while the main thread forks the workers again and
# again. A worker forked while git starts would inherit the pipe through which Popen
# learns that git is running, and that start would wait for the worker to exit.
_RACE = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from ingest import workers
    from ingest.git import Repo

    repo, tokenizer = Repo(Path(sys.argv[1])), Path(sys.argv[2])
    stop = threading.Event()
    started = [0]

    def spawn():
        while not stop.is_set():
            repo.run("rev-parse", "HEAD")
            started[0] += 1

    thread = threading.Thread(target=spawn, daemon=True)
    thread.start()
    pools = []
    for _ in range(8):  # kept running, as a run's workers are
        pools.append(workers.Pool(lambda: tokenizer, 64, 2))
        pools[-1].start()
    stop.set()
    thread.join(timeout=20)
    stuck = thread.is_alive()
    for pool in pools:
        pool.close()
    print("stuck" if stuck else started[0])
""")


def test_workers_fork_safely_while_another_source_starts_git(tmp_path, tiny) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    done = subprocess.run([sys.executable, "-c", _RACE, str(tmp_path), str(models.tokenizer_path("builtin:tiny"))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() != "stuck", "a git start waited on a forked worker"
    assert int(done.stdout) > 0


def test_a_closed_pool_starts_no_workers_again(tiny) -> None:
    pool = workers.Pool(lambda: models.tokenizer_path("builtin:tiny"), 64, 2)
    assert list(pool.map(workers.pr_number, ["Merge pull request #3 from a/b"])) == [3]
    pool.close()
    with pytest.raises(workers.SetupError, match="stopped"):
        pool.start()
    with pytest.raises(workers.SetupError, match="stopped"):
        list(pool.map(workers.pr_number, ["Fix (#4)"]))


def _killed(item: int) -> int:
    if item == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    return item


def test_a_worker_killed_halfway_stops_the_map_with_a_clear_error(tiny) -> None:
    pool = workers.Pool(lambda: models.tokenizer_path("builtin:tiny"), 64, 2)
    got: list[int] = []
    started = time.monotonic()
    try:
        with pytest.raises(workers.SetupError, match=r"worker stopped with exit code -9 \(killed"):
            for item in pool.map(_killed, range(5)):
                got.append(item)
    finally:
        pool.close()
    assert got == [0, 1]  # results before the lost one still come, in order
    assert time.monotonic() - started < 60  # instead of waiting for ever


# Idle workers wait for tasks; one of them holds the task queue's read lock while it waits.
# Both, or one of them, are killed there, as the out-of-memory killer would, and `close` must
# still return.
_IDLE_KILLED = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from ingest import workers

    for killed in (2, 1):
        pool = workers.Pool(lambda: Path(sys.argv[1]), 64, 2)
        assert list(pool.map(workers.pr_number, ["Fix (#4)"] * 8)) == [4] * 8
        for w in pool._workers[:killed]:
            os.kill(w.pid, signal.SIGKILL)
            w.join()
        pool.close()
        assert all(w.exitcode is not None for w in pool._workers)
        print("closed", killed)
""")


def test_a_pool_whose_idle_workers_were_killed_still_closes(tiny) -> None:
    done = subprocess.run([sys.executable, "-c", _IDLE_KILLED, str(models.tokenizer_path("builtin:tiny"))],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["closed 2", "closed 1"]


def _niceness(_: int) -> int:
    return os.nice(0)


def test_the_workers_yield_the_processor_to_the_parent(tiny) -> None:
    pool = workers.Pool(lambda: models.tokenizer_path("builtin:tiny"), 64, 2)
    try:
        assert set(pool.map(_niceness, range(4))) == {min(19, os.nice(0) + workers.WORKER_NICENESS)}
    finally:
        pool.close()


def _signals(_: int) -> tuple[bool, bool]:
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, signal.getsignal(signal.SIGINT) == signal.SIG_IGN


# The cycle's process (tuner.schedule) turns SIGTERM into SystemExit, and its workers are
# forked from a source's thread, as the side lane's are. A worker that kept that handler was
# seen to outlive the SIGTERM of the pool's `terminate`, and `close` then waited for ever.
_CAUGHT = textwrap.dedent("""
    import signal, sys, threading
    from pathlib import Path
    from ingest import workers
    from tests.ingest.test_workers import _signals

    def stopped(*_):
        raise SystemExit("stopped")

    signal.signal(signal.SIGTERM, stopped)
    pool = workers.Pool(lambda: Path(sys.argv[1]), 64, 2)
    got = []
    thread = threading.Thread(target=lambda: got.extend(pool.map(_signals, range(16))))
    thread.start()
    thread.join()
    pool.close()
    print(sorted(set(got)))
""")


def test_the_workers_leave_sigterm_and_ctrl_c_to_their_pool(tiny) -> None:
    done = subprocess.run([sys.executable, "-c", _CAUGHT, str(models.tokenizer_path("builtin:tiny"))],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    # SIGTERM kills a worker (the pool's terminate), whatever handler its parent had; Ctrl-C
    # reaches the parent, which closes the pool
    assert done.stdout.strip() == "[(True, True)]"
