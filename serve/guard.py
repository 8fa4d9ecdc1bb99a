"""A small process that makes sure the engine never outlives the gateway.

`python -m serve.guard -- CMD ...` starts CMD in a process group of its own and waits.
It ends that whole group (the engine and every worker it forked) when the gateway that
started the guard is gone — even if the gateway was killed with SIGKILL and could not
clean up — when it is told to stop (SIGTERM/SIGINT), or when CMD itself exits, whose
exit code it then returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from repotune import processes

POLL_S = 0.5
GRACE_S = 10.0


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: python -m serve.guard -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]
    parent = os.getppid()
    proc = subprocess.Popen(command, start_new_session=True)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        code = proc.poll()
        if code is not None:
            processes.stop(proc, GRACE_S, sweep=True)  # workers the engine left behind
            return code
        if stopping or os.getppid() != parent:  # told to stop, or the gateway is gone
            processes.stop(proc, GRACE_S, sweep=True)
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
