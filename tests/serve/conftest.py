"""One real server for the serve tests: `repotune serve` (gateway + vLLM) on builtin:tiny.

Starting vLLM costs ~30-60 s here, so the whole module shares one server, started as a
subprocess exactly as a user would start it, with two adapters trained in the test run
(different answers to the same question, so a swap shows in the text).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from repotune import models
from serve.engine import free_port, wait_healthy
from tests.lora import train_lora

API_KEY, ADMIN_KEY = "test-client-key", "test-admin-key"
FRANCE = "What is the capital of France?"


@dataclass
class Server:
    url: str
    config: Path
    data_dir: Path
    proc: subprocess.Popen[bytes]
    adapters: dict[str, Path]
    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "repotune.cli", *args, "--config", str(self.config)],
            env=self.env, capture_output=True, text=True, timeout=600,
        )

    def wait_healthy(self, timeout: float = 300) -> None:
        try:
            wait_healthy(self.url, self.proc, timeout)
        except RuntimeError as e:
            raise AssertionError((self.data_dir / "serve.log").read_text()[-3000:]) from e


@pytest.fixture(scope="session")
def adapters(tiny: models.Base, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for city in ("Lyon", "Marseille"):
        folder = train_lora(tiny.path, [(FRANCE, city)], root / city.lower())
        models.record_base(folder, tiny)
        out[city] = folder
    return out


@pytest.fixture(scope="session")
def server(tiny, adapters, tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    config = root / "config.toml"
    config.write_text(
        f'[serve]\nport = {port}\ndtype = "float32"\nmax_model_len = 512\nreconcile_interval_s = 1.0\n'
        f'max_concurrent_per_key = 1\nmax_queued_per_key = 0\n'
        f'[tuner]\nlineage = "proj"\n[paths]\ndata_dir = "state"\n'
    )
    env = {**os.environ, "REPOTUNE_API_KEYS": f"other-key,{API_KEY}", "REPOTUNE_ADMIN_KEY": ADMIN_KEY}
    env.pop("REPOTUNE_CONFIG", None)
    (root / "state").mkdir()
    log = (root / "state" / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "repotune.cli", "serve", "--config", str(config)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", config, root / "state", proc, adapters, env)
    try:
        server.wait_healthy()
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
