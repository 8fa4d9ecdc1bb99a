"""`repotune up`: the server and the tuner as two child processes of one command.

The product as a user meets it: `repotune serve` (the gateway and its engine) and
`repotune tuner --first-now` (a cycle at once when nothing is promoted yet, while `base`
already answers; then the schedule and the webhook). They are processes of their own, as
they are when run apart, so a cycle's training never holds up the server's event loop.

Never a server open to anyone by accident: without `REPOTUNE_API_KEYS` a client key is
made for this machine and kept in `data_dir/api_key`, and without `REPOTUNE_ADMIN_KEY` an
admin key in `data_dir/admin_key` (both mode 0600, reused on the next start), so that
the tuner's gate can promote. Ctrl-C or SIGTERM stops both children, the engine with the
server; if either child ends, the other is stopped and `up` exits with its code.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from repotune import processes, promotion
from repotune.config import SECRET_ENV, Settings

Say = Callable[[str], None]
STOP_GRACE_S = 60.0  # the server drains and stops its engine within uvicorn's 30 s and the supervisor's own


@dataclass
class Keys:
    client: str
    admin: str
    client_from: str  # where the key comes from, in words
    admin_from: str


def keys(settings: Settings) -> Keys:
    """The client and admin keys: from the environment, else made once and kept under data_dir (0600)."""
    client = settings.secrets.api_keys[0] if settings.secrets.api_keys else None
    admin = settings.secrets.admin_key
    return Keys(
        client=client or _kept(settings.data_dir / "api_key"),
        admin=admin or _kept(settings.data_dir / "admin_key"),
        client_from=f"${SECRET_ENV['api_keys']}" if client else str(settings.data_dir / "api_key"),
        admin_from=f"${SECRET_ENV['admin_key']}" if admin else str(settings.data_dir / "admin_key"),
    )


def _kept(path: Path) -> str:
    if path.is_file():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "rt-" + secrets.token_urlsafe(32)
    fd = os.open(path.with_suffix(".new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(path.with_suffix(".new"), path)
    return key


def connect_text(settings: Settings, k: Keys, promoted: bool) -> str:
    """How to connect, with an openai snippet that works as pasted: it asks the lineage when an
    adapter is promoted, else `base` (the lineage's name answers 404 until one is)."""
    url = f"{promotion.server_url(settings)}/v1"
    key_line = (f'os.environ["{SECRET_ENV["api_keys"]}"].split(",")[0]' if k.client_from.startswith("$")
                else f'open("{k.client_from}").read().strip()')
    return (f"repotune is up: {url}\n"
            f"  API key: {k.client_from}\n"
            f"  models: \"{settings.lineage}\" (the promoted adapter"
            + ("" if promoted else ": none yet, the first cycle is running") + "), \"base\", "
            f"\"{settings.lineage}@v<N>\" (a pinned version)\n"
            f"  tuner: `repotune tuner status`; admin key: {k.admin_from}\n\n"
            "from openai import OpenAI\n"
            + ("import os\n" if key_line.startswith("os.") else "")
            + f'client = OpenAI(base_url="{url}", api_key={key_line})\n'
            + ("" if promoted else f'# model="{settings.lineage}" once the first cycle has promoted an adapter '
               "(repotune tuner status)\n")
            + f'reply = client.chat.completions.create(model="{settings.lineage if promoted else "base"}", '
            'messages=[{"role": "user", "content": "What did the last commit change?"}])\n'
            "print(reply.choices[0].message.content)\n")


def run(settings: Settings, say: Say, ready_timeout_s: float = 900.0) -> int:
    """Start both, print how to connect once the server answers, and wait; returns the exit code."""
    k = keys(settings)
    env = {**os.environ, SECRET_ENV["api_keys"]: ",".join(settings.secrets.api_keys or (k.client,)),
           SECRET_ENV["admin_key"]: k.admin}
    config = ["--config", str(settings.source)] if settings.source else []
    cli = [sys.executable, "-m", "repotune.cli"]
    stop = {"asked": False}

    def asked(*_: object) -> None:
        stop["asked"] = True

    signal.signal(signal.SIGINT, asked)
    signal.signal(signal.SIGTERM, asked)
    server = subprocess.Popen([*cli, "serve", *config], env=env, start_new_session=True)
    tuner = subprocess.Popen([*cli, "tuner", "--first-now", *config], env=env, start_new_session=True)
    children = {"server": server, "tuner": tuner}
    try:
        announced = False
        started = time.monotonic()
        while not stop["asked"]:
            ended = {name: p.returncode for name, p in children.items() if p.poll() is not None}
            if ended:
                name, code = next(iter(ended.items()))
                say(f"the {name} stopped (exit {code}); stopping the rest")
                return code or 1
            if not announced and _healthy(settings):
                say(connect_text(settings, k, _promoted(settings)))
                announced = True
            if not announced and time.monotonic() - started > ready_timeout_s:
                say(f"the server did not answer within {ready_timeout_s:g} s; see {settings.data_dir / 'logs'}")
                return 1
            time.sleep(0.5)
        say("stopping the tuner and the server")
        return 0
    finally:
        for p in children.values():
            processes.stop(p, STOP_GRACE_S, group=True)


def _promoted(settings: Settings) -> bool:
    from contextlib import closing

    from repotune import db as store
    from repotune import registry

    with closing(store.open_db(store.db_path(settings.data_dir))) as db:
        return registry.promoted(db, settings.lineage) is not None


def _healthy(settings: Settings) -> bool:
    try:
        return httpx.get(f"{promotion.server_url(settings)}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


