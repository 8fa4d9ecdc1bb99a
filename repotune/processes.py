"""Stopping a child process that leads a process group of its own (`start_new_session=True`).

The server, the engine's guard, `repotune up` and eval's temporary server all start
children that start children (the engine forks workers). `stop` is how each of them ends
one: SIGTERM first, so the child can drain and stop what it started; SIGKILL after a
grace period, to the whole group, so that nothing it forked outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop(proc: subprocess.Popen[bytes], grace_s: float, *, group: bool = False, sweep: bool = False) -> int | None:
    """End `proc`: SIGTERM (to its whole group with `group`, else to it alone, which then stops
    its own children), wait up to `grace_s`, then SIGKILL its group. With `sweep`, SIGKILL the
    group even when `proc` ended in time (workers it left behind). Returns its exit code (None
    only if it outlived SIGKILL's wait). `proc` must have been started in a session of its own:
    its pid is then its group's id."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    if proc.poll() is None or sweep:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    return proc.returncode
