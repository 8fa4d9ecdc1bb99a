"""One place where every failure becomes OpenAI's error body and the right status.

Clients (the openai SDK, IDE plugins) read `{"error": {"message", "type", "param",
"code"}}`; a bare 500 or a plain-text body breaks them. Routes raise `APIError` (or let
FastAPI's validation fail), and the handlers here render it. Errors relayed from the
engine are normalized too: vLLM sends an integer `code` where the spec has a string, and
some of its bodies are not objects at all.
"""

from __future__ import annotations

import ast
import collections
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("repotune.gateway")

# OpenAI's error types by status (anything else is a server_error).
TYPES: dict[int, str] = collections.defaultdict(lambda: "server_error", {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "timeout_error",
})


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def _response(status: int, message: str, code: str | None = None, param: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body(status, message, code, param), status_code=status, headers=headers)


def from_engine(status: int, payload: Any) -> JSONResponse:
    """An engine error, reshaped to the spec (string code, object body)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "the engine refused the request")
        param = error.get("param") if isinstance(error.get("param"), str) else None
        code = error.get("code")
        code = code if isinstance(code, str) else None
    else:
        message = str(payload.get("message") if isinstance(payload, dict) else payload) or "engine error"
        param, code = None, None
    if status == 400 and _PYDANTIC_DUMP.match(message):
        message, param = _readable(message, param)
        code = code or "invalid_value"
    if status == 400 and "maximum context length" in message:
        code = "context_length_exceeded"
    return _response(status if status >= 400 else 502, message, code, param)


# vLLM's validation refusals: "22 validation errors:\n  {'type': …, 'loc': 'body.messages.0…', 'msg': …}"
# (vllm/entrypoints/serve/exception_handling/handlers/validation.py). The gateway checks
# what clients usually get wrong before the engine sees it (serve.checks); what still gets
# through is turned into one sentence here. If vLLM changes that format, the message is
# passed on as it came, which is what happened before.
_PYDANTIC_DUMP = re.compile(r"^\d+ validation errors?:\n")


def _readable(message: str, param: str | None) -> tuple[str, str | None]:
    """The first error of a pydantic dump as "<param> <what is wrong>", and that param."""
    first = message.split("\n", 2)[1].strip()
    try:
        error = ast.literal_eval(first)  # the handler writes str() of a dict of plain values
    except (ValueError, SyntaxError):
        return message, param
    if not isinstance(error, dict) or not isinstance(error.get("msg"), str):
        return message, param
    where = _param(error.get("loc")) or _param(param)
    what = error["msg"][0].lower() + error["msg"][1:]
    return (f"{where}: {what}" if where else error["msg"]), where or None


def _param(loc: object) -> str:
    """`body.messages.0.ChatCompletionUserMessageParam.content` → `messages[0].content`."""
    if not isinstance(loc, str | list | tuple):
        return ""
    parts = loc.split(".") if isinstance(loc, str) else [str(p) for p in loc]
    out = ""
    for part in parts:
        if (part == "body" and not out) or part[:1].isupper():  # the body itself; a union branch's class
            continue
        out += f"[{part}]" if part.isdigit() else f".{part}" if out else part
    return out


def install(app: FastAPI, on_error: Callable[[int], None] | None = None) -> None:
    """Render every failure as OpenAI's error body; `on_error(status)` sees each one."""

    def response(status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
        if on_error:
            on_error(status)
        return _response(status, message, code, param, headers)

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return response(exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return response(400, "the request body is not valid JSON", "invalid_json")
        return response(400, f"{param}: {msg}" if param else msg, "invalid_value", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return response(exc.status_code, str(exc.detail), None, None, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return response(500, f"internal error: {type(exc).__name__}", "internal_error")
