"""repotune.promotion: the one promote/rollback call the CLI, the gate and the cycle share.

Through a running server it is tested end to end in tests/serve/test_gateway.py; here,
the path with no server, the base check, and a server that cannot be asked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from repotune import config as cfg
from repotune import db as store
from repotune import models, promotion, registry
from serve.engine import free_port

from .test_registry import make_adapter


@pytest.fixture
def settings(tmp_path, micro, clean_env) -> cfg.Settings:
    """A project with two registered versions and no server (serve.port: a free port)."""
    path = tmp_path / "config.toml"
    path.write_text(f'[model]\nbase = "{micro}"\n[serve]\nport = {free_port()}\n[tuner]\nlineage = "proj"\n'
                    f'[paths]\ndata_dir = "state"\n')
    settings = cfg.load(path)
    base = models.resolve(str(micro))
    db = store.open_db(store.db_path(settings.data_dir))
    folder = make_adapter(base, tmp_path / "adapter")
    for _ in range(2):
        registry.register(db, settings.data_dir, "proj", folder, base, settings.config.serve.max_lora_rank, "train")
    return settings


def _db(settings: cfg.Settings):
    return store.open_db(store.db_path(settings.data_dir))


def test_with_no_server_the_registry_records_promote_and_rollback(settings):
    assert promotion.promote(settings, "proj", 1, "gate", "passed").status == "promoted"
    assert promotion.promote(settings, "proj", 2, "gate", "better").status == "promoted"
    back = promotion.rollback(settings, "proj", "cycle", "v2 regressed")
    assert back.version == 1 and back.status == "promoted"
    assert registry.promoted(_db(settings), "proj").version == 1
    events = registry.events(_db(settings), "proj")
    assert {(e["actor"], e["reason"]) for e in events} >= {("gate", "passed"), ("cycle", "v2 regressed")}


def test_a_version_for_another_base_is_refused_and_nothing_changes(settings):
    db = _db(settings)
    db.execute("update adapters set base_fingerprint = 'feedfacefeedface' where version = 2")
    db.conn.commit()
    promotion.promote(settings, "proj", 1, "gate", "first")
    with pytest.raises(registry.RegistryError, match=r"feedfacefeedface.*cannot be served"):
        promotion.promote(settings, "proj", 2, "gate", "x")
    assert registry.promoted(_db(settings), "proj").version == 1


def test_unknown_versions_and_nothing_to_roll_back_to_are_registry_errors(settings):
    with pytest.raises(registry.RegistryError, match="no version v7"):
        promotion.promote(settings, "proj", 7, "gate", "x")
    with pytest.raises(registry.RegistryError, match="no superseded version"):
        promotion.rollback(settings, "proj", "gate", "x")


class _Up(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def something_listening(settings) -> Iterator[None]:
    server = HTTPServer(("127.0.0.1", settings.config.serve.port), _Up)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield
    server.shutdown()


def test_a_running_server_without_the_admin_key_is_not_bypassed(settings, something_listening):
    """The registry is not written behind a running server's back: it would serve the old version."""
    with pytest.raises(registry.RegistryError, match="set REPOTUNE_ADMIN_KEY"):
        promotion.promote(settings, "proj", 1, "gate", "x")
    assert registry.promoted(_db(settings), "proj") is None
