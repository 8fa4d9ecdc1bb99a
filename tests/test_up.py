"""`repotune up` from nothing: no keys in the environment, nothing promoted. It makes a key for
this machine (0600), the server answers `base` while a first cycle runs at once, the cycle
promotes its adapter and the alias moves to it live; Ctrl-C stops the tuner, the server and
its engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from repotune import config as cfg
from repotune import db as store
from repotune import registry
from serve.engine import free_port
from tests import training
from tests.eval.test_judge import GENTLE

pytestmark = pytest.mark.vllm


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}").exists() else []:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found.update(kids)
            todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_up_serves_base_at_once_promotes_a_first_cycle_live_and_stops_everything_on_ctrl_c(tmp_path, tiny):
    repo = training.small_repo(tmp_path / "project")
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[serve]\nport = {port}\ndtype = "float32"\nmax_model_len = 1024\nreconcile_interval_s = 1.0\n'
        f'[paths]\ndata_dir = "state"\n[ingest]\nrepo = "{repo.path}"\nworkers = 1\n'
        '[tuner]\nlineage = "proj"\n[tuner.data]\ngenerators = ["templates"]\nparaphrases = 2\n'
        '[eval]\nwait_s = 8.0\n[eval.gate]\ndomain_floor = 0.0\n[policy]\nmode = "off"\n'
        '[train]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in GENTLE.items()))
    env = {k: v for k, v in os.environ.items() if k not in ("REPOTUNE_API_KEYS", "REPOTUNE_ADMIN_KEY",
                                                              "REPOTUNE_CONFIG")}
    up = subprocess.Popen([sys.executable, "-m", "repotune.cli", "up", "--config", str(config)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 600
        while not any("print(reply" in line for line in lines):
            assert time.monotonic() < deadline and up.poll() is None, "".join(lines)[-3000:]
            lines.append(up.stdout.readline())
        said = "".join(lines)
        key_file = tmp_path / "state" / "api_key"
        assert f"http://127.0.0.1:{port}/v1" in said and str(key_file) in said
        assert key_file.stat().st_mode & 0o777 == 0o600 and (tmp_path / "state" / "admin_key").is_file()
        # The printed snippet, as a newcomer pastes it, is answered (by base while nothing is promoted).
        snippet = said[said.index("from openai import OpenAI"):said.index("print(reply")]
        scope: dict[str, object] = {}
        exec(snippet, scope)  # the text up printed, run as the user would
        assert scope["reply"].choices[0].message.content is not None  # type: ignore[attr-defined]
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key_file.read_text().strip())
        settings = cfg.load(config, env={})
        db = store.open_db(store.db_path(settings.data_dir))
        deadline = time.monotonic() + 600
        while registry.promoted(db, "proj") is None:
            assert time.monotonic() < deadline and up.poll() is None, "the first cycle did not promote"
            time.sleep(1)
        version = registry.promoted(db, "proj").version
        _until(lambda: any(m.id == "proj" and getattr(m, "version", None) == version
                           for m in client.models.list().data))
        assert client.chat.completions.create(model="proj", messages=[{"role": "user", "content": "Hello"}],
                                              max_tokens=8).choices[0].finish_reason in ("stop", "length")
        family = _descendants(up.pid)
        assert len(family) >= 3  # the server, the tuner and the engine below the server
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(120)
    assert code == 0
    time.sleep(1)
    assert [p for p in family if _alive(p)] == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def _until(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.5)
