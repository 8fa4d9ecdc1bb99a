"""The GitHub webhook's bad input, on a gateway without an engine: off without a secret (403), and
with one, a body that is not JSON or is sent as form data is a 400 that says why, even when signed."""

from __future__ import annotations

import httpx

from repotune import cycles
from repotune import db as store
from serve.engine import free_port
from serve.hooks import signature

from .test_gateway import _gateway

SECRET = "hooks-test-secret"


def _post(url: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(f"{url}/admin/hooks/github", content=body, timeout=30,
                      headers={"X-GitHub-Event": "push", "Content-Type": content_type,
                               "X-Hub-Signature-256": signature(SECRET, body)})


def test_the_webhook_is_off_without_a_secret_and_refuses_what_is_not_a_json_event(tmp_path, monkeypatch, tiny):
    gone = f'upstreams = ["http://127.0.0.1:{free_port()}"]'
    monkeypatch.delenv("REPOTUNE_WEBHOOK_SECRET", raising=False)
    with _gateway(tmp_path / "off", monkeypatch, gone) as url:
        r = _post(url, b'{"ref": "refs/heads/main"}')
        assert r.status_code == 403 and r.json()["error"]["code"] == "webhook_disabled"
        assert "REPOTUNE_WEBHOOK_SECRET" in r.json()["error"]["message"]
    monkeypatch.setenv("REPOTUNE_WEBHOOK_SECRET", SECRET)
    with _gateway(tmp_path / "on", monkeypatch, gone) as url:
        r = _post(url, b'{"ref": ')
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = _post(url, b"payload=%7B%7D", "application/x-www-form-urlencoded")
        assert r.status_code == 400 and "application/json" in r.json()["error"]["message"]
        r = _post(url, b"[1, 2]")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    db = store.open_db(store.db_path(tmp_path / "on" / "state"))
    assert cycles.pending(db) == []  # none of them asked for a cycle
