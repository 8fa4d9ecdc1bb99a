"""`POST /admin/hooks/github`: GitHub's push and merged-pull-request events ask for a cycle.

The route is authenticated by GitHub's signature, not the admin key: `X-Hub-Signature-256`
is the HMAC-SHA256 of the raw body under `REPOTUNE_WEBHOOK_SECRET`, compared in constant
time; a missing or wrong one is a 401 and starts nothing (with no secret set the route is
off: 403). The server may not import the tuner, and they are separate processes: an
accepted event writes a request row to the store (`repotune.cycles.request`) and the
tuner takes it (debounced, coalesced with a running cycle). The answer is 202 and says
whether a tuner is running to take it. `ping` is answered; a push to another branch, a
pull request closed unmerged and other events are acknowledged (200) and ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from repotune import cycles
from repotune import db as store
from serve import checks
from serve.errors import APIError

if TYPE_CHECKING:
    from serve.gateway import GatewayState

router = APIRouter()


@dataclass(frozen=True)
class Hooks:
    data_dir: Path
    secret: str | None
    branch: str | None  # None: the repository's default branch, as the event names it


@router.post("/admin/hooks/github")
async def github(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    hooks = state.hooks
    if hooks is None or not hooks.secret:
        raise APIError(403, "the webhook is off: set REPOTUNE_WEBHOOK_SECRET on the server", "webhook_disabled")
    raw = await checks.raw_body(request, state.max_body_bytes)
    _verify(hooks.secret, raw, request.headers.get("x-hub-signature-256"))
    event = request.headers.get("x-github-event", "")
    if event == "ping":
        return JSONResponse({"message": "pong"})
    if "form-urlencoded" in request.headers.get("content-type", ""):
        raise APIError(400, "the webhook sends form data: set its content type to application/json on GitHub",
                       "invalid_request")
    body = checks.parse(raw)
    source, detail, ignored = _read(event, body, hooks.branch)
    if ignored:
        return JSONResponse({"message": f"ignored: {ignored}"})
    detail["delivery"] = request.headers.get("x-github-delivery")
    request_id, tuner = await asyncio.to_thread(_record, hooks.data_dir, source, detail)
    taken = ("the tuner will start a cycle" if tuner else
             "no tuner is running to take it: start `repotune tuner` (or `repotune up`)")
    return JSONResponse({"message": f"cycle requested ({source}); {taken}", "request": request_id,
                         "tuner_running": tuner}, status_code=202)


def signature(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def _verify(secret: str, raw: bytes, given: str | None) -> None:
    if not given:
        raise APIError(401, "missing X-Hub-Signature-256: the webhook's secret must be set on GitHub",
                       "invalid_signature")
    if not hmac.compare_digest(signature(secret, raw), given):
        raise APIError(401, "the X-Hub-Signature-256 signature does not match the body", "invalid_signature")


def _read(event: str, body: dict[str, Any], branch: str | None) -> tuple[str, dict[str, Any], str | None]:
    """(source, detail, why it is ignored or None)."""
    repo = body.get("repository")
    wanted = branch or (repo.get("default_branch") if isinstance(repo, dict) else None)
    if event == "push":
        ref = body.get("ref")
        if not isinstance(ref, str) or not ref.startswith("refs/heads/"):
            return "github:push", {}, f"a push to {ref!r}, not to a branch"
        pushed = ref.removeprefix("refs/heads/")
        if pushed != wanted:
            return "github:push", {}, f"a push to {pushed}, not to {wanted}"
        return "github:push", {"ref": ref, "sha": body.get("after")}, None
    if event == "pull_request":
        pr = body.get("pull_request")
        if body.get("action") != "closed" or not isinstance(pr, dict) or not pr.get("merged"):
            return "github:pull_request", {}, f"pull request {body.get('action')!r}, not closed and merged"
        into = pr["base"].get("ref") if isinstance(pr.get("base"), dict) else None
        if into != wanted:
            return "github:pull_request", {}, f"a pull request merged into {into}, not into {wanted}"
        return "github:pull_request", {"number": pr.get("number"), "sha": pr.get("merge_commit_sha")}, None
    return event, {}, f"the {event or 'unnamed'} event does not ask for a cycle"


def _record(data_dir: Path, source: str, detail: dict[str, Any]) -> tuple[int, bool]:
    with closing(store.open_db(store.db_path(data_dir))) as db:
        request_id = cycles.request(db, source, detail)
    return request_id, cycles.is_held(data_dir, cycles.TUNER_LOCK)
