"""Starting what the serve benchmarks measure: one vLLM engine, and the gateway in front of it.

The engine is started directly (the same command line `repotune serve` uses), and the
gateway as `repotune serve` with `serve.upstreams` naming that engine, so a benchmark can
send the same requests to both and compare.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from repotune import config as cfg
from repotune import models, processes
from serve.engine import engine_command, engine_env, free_port, wait_healthy

API_KEY, ADMIN_KEY = "bench-client-key", "bench-admin-key"


@dataclass
class Pair:
    direct: str  # the engine
    gateway: str  # repotune serve in front of it
    config: Path
    env: dict[str, str]
    gateway_pid: int


@contextmanager
def engine_and_gateway(work: Path, dtype: str = "float32", engine_args: tuple[str, ...] = (),
                       settings: str = "") -> Iterator[Pair]:
    """The engine, and `repotune serve` in front of it; `settings`: more of the gateway's TOML."""
    work.mkdir(parents=True, exist_ok=True)
    base = models.resolve("builtin:tiny")
    serve = cfg.ServeSection(dtype=dtype, max_model_len=1024, engine_args=list(engine_args))
    engine_port = free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "serve.guard", "--", *engine_command(serve, base.path, engine_port)],
        env=engine_env(serve), stdout=(work / "engine.log").open("wb"), stderr=subprocess.STDOUT,
    )
    direct = f"http://127.0.0.1:{engine_port}"
    try:
        wait_healthy(direct, engine)
        with gateway(work, direct, settings) as pair:
            yield pair
    finally:
        processes.stop(engine, 60)


@contextmanager
def gateway(work: Path, direct: str, settings: str = "", name: str = "gateway") -> Iterator[Pair]:
    """`repotune serve` in front of the engine at `direct`, its config and log named `name` in `work`."""
    port = free_port()
    config = work / f"{name}.toml"
    state = "state" if name == "gateway" else f"state-{name}"  # each gateway its own store
    config.write_text(
        f'[serve]\nport = {port}\nupstreams = ["{direct}"]\nmax_concurrent_per_key = 256\n'
        f'max_queued_per_key = 1024\nreconcile_interval_s = 1.0\n[tuner]\nlineage = "bench"\n'
        f'[paths]\ndata_dir = "{state}"\n{settings}'
    )
    env = {**os.environ, "REPOTUNE_API_KEYS": API_KEY, "REPOTUNE_ADMIN_KEY": ADMIN_KEY}
    env.pop("REPOTUNE_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "repotune.cli", "serve", "--config", str(config)],
        env=env, stdout=(work / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield Pair(direct, f"http://127.0.0.1:{port}", config, env, proc.pid)
    finally:
        processes.stop(proc, 60)


