"""One real server for the serve tests: `repotune serve` (gateway + vLLM) on builtin:tiny.

Starting vLLM costs ~30-60 s here, so the tests share one server, started as a
subprocess exactly as a user would start it, with two adapters trained in the test run
(different answers to the same question, so a swap shows in the text). Sharing it is
safe because no test depends on what another did to it: a test that needs adapters gets
a lineage of its own (`lineage`), metrics are read as differences, and a test that
kills the server leaves the next test a new one (`server` starts it again if it died).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import uuid
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def policy_server(root: Path, policy_toml: str, repo: Path | None = None) -> Iterator[Server]:
    """A server of its own for a policy test module, its `[policy]` section given (and `repo` ingested
    first when given, so the domain index exists); stopped when the generator closes."""
    port = free_port()
    config = root / "config.toml"
    ingest = f'[ingest]\nrepo = "{repo}"\nworkers = 1\n' if repo else ""
    config.write_text(f'[serve]\nport = {port}\n{SERVE_TOML}{EVAL_TOML}[tuner]\nlineage = "proj"\n'
                      f'[paths]\ndata_dir = "state"\n{ingest}[policy]\n{policy_toml}')
    env = {**os.environ, "REPOTUNE_API_KEYS": API_KEY, "REPOTUNE_ADMIN_KEY": ADMIN_KEY}
    env.pop("REPOTUNE_CONFIG", None)
    cli = [sys.executable, "-m", "repotune.cli"]
    if repo:
        done = subprocess.run([*cli, "ingest", "--config", str(config)], env=env, capture_output=True, text=True)
        assert done.returncode == 0 and "server: none running" in done.stdout, done.stderr
    (root / "state" / "logs").mkdir(parents=True, exist_ok=True)
    log = (root / "state" / "serve.log").open("wb")
    proc = subprocess.Popen([*cli, "serve", "--config", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    s = Server(f"http://127.0.0.1:{port}", config, root / "state", proc, {}, env)
    s.wait_healthy()
    yield s
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)


@pytest.fixture(scope="session")
def adapters(tiny: models.Base, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for city in ("Lyon", "Marseille"):
        folder = train_lora(tiny.path, [(FRANCE, city)], root / city.lower())
        models.record_base(folder, tiny)
        out[city] = folder
    return out


# The test server's limits: 8 units per key (so n=8 fills a key) and no queue, so a key
# over its limit is refused at once (the queue itself: test_limits.py).
SERVE_TOML = (
    'dtype = "float32"\nmax_model_len = 1024\nreconcile_interval_s = 1.0\n'
    "max_concurrent_per_key = 8\nmax_queued_per_key = 0\nmax_n = 8\nmax_cpu_loras = 16\n"
)
EVAL_TOML = "[eval]\nconcurrency = 8\n"  # within the key's 8: the gate's questions are not refused


def _start(adapters: dict[str, Path], root: Path) -> Server:
    port = free_port()
    config = root / "config.toml"
    config.write_text(f'[serve]\nport = {port}\n{SERVE_TOML}{EVAL_TOML}[tuner]\nlineage = "proj"\n'
                      '[paths]\ndata_dir = "state"\n')
    env = {**os.environ, "REPOTUNE_API_KEYS": f"other-key,{API_KEY}", "REPOTUNE_ADMIN_KEY": ADMIN_KEY}
    env.pop("REPOTUNE_CONFIG", None)
    (root / "state").mkdir()
    log = (root / "state" / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "repotune.cli", "serve", "--config", str(config)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    return Server(f"http://127.0.0.1:{port}", config, root / "state", proc, adapters, env)


@pytest.fixture(scope="session")
def _servers(adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def server(_servers: list[Server], adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The shared server, healthy: a new one (new port, new state) if a test killed the last."""
    if not _servers or _servers[-1].proc.poll() is not None:
        _servers.append(_start(adapters, tmp_path_factory.mktemp("server")))
    current = _servers[-1]
    current.wait_healthy()  # also waits out an engine restart another test caused
    return current


_numbers = itertools.count(1)


@pytest.fixture
def lineage(server: Server) -> str:
    """A lineage of this test's own on the shared server: v1 answers Lyon, v2 Marseille, none promoted."""
    name = f"t{next(_numbers)}_{uuid.uuid4().hex[:6]}"
    for city in ("Lyon", "Marseille"):
        done = server.cli("adapters", "register", str(server.adapters[city]), "--lineage", name, "--reason", city)
        assert done.returncode == 0, done.stderr
    return name
