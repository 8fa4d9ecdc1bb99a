"""What the gateway checks in a request body before the engine sees it.

The engine validates too, but its refusals are pydantic dumps ("22 validation errors:
{'type': 'string_type', 'loc': …}") that no client can show a user, and some bodies do
not reach its validation at all (a JSON nesting deep enough to exhaust the parser). So
the gateway checks what clients get wrong — the body itself, parameter names and types,
each message's role and content, the number of choices — and answers one readable
sentence with OpenAI's `param` (`messages[0].content`), as OpenAI does. What passes here
is sent on unchanged; the engine's own checks (ranges, context length) still apply.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from serve.errors import APIError

# Parameters the engine accepts for each endpoint; anything else is refused by name.
COMMON = {
    "model", "max_tokens", "stop", "n", "temperature", "top_p", "seed", "stream", "stream_options",
    "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "user", "response_format", "top_k",
    "min_p", "repetition_penalty", "min_tokens", "ignore_eos",
}
CHAT_PARAMS = COMMON | {
    "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
}
COMPLETION_PARAMS = COMMON | {"prompt", "echo", "suffix", "best_of"}

# OpenAI's roles (`function` is the legacy one); any other is refused.
ROLES = ("system", "developer", "user", "assistant", "tool", "function")

# The JSON type each optional parameter must have when it is not null.
_INT, _NUMBER, _BOOL, _STR, _OBJECT, _ARRAY = "an integer", "a number", "a boolean", "a string", "an object", "an array"
_TYPES: dict[str, str] = {
    **dict.fromkeys(("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs", "best_of", "top_k",
                     "min_tokens"), _INT),
    **dict.fromkeys(("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p",
                     "repetition_penalty"), _NUMBER),
    **dict.fromkeys(("stream", "echo", "ignore_eos", "parallel_tool_calls"), _BOOL),
    **dict.fromkeys(("user", "suffix"), _STR),
    **dict.fromkeys(("stream_options", "response_format", "logit_bias"), _OBJECT),
    "tools": _ARRAY,
}


async def json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's body as a JSON object: 413 over `max_bytes`, 400 if it is not one."""
    return parse(await raw_body(request, max_bytes))


async def raw_body(request: Request, max_bytes: int) -> bytes:
    """The request's body as bytes: 413 over `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"request body over {max_bytes} bytes", "request_too_large")
    raw = await request.body()
    if len(raw) > max_bytes:
        raise APIError(413, f"request body over {max_bytes} bytes", "request_too_large")
    return raw


def parse(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says why it is not one."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        # RecursionError: nesting deep enough ("[" * 100000) exhausts the parser's stack;
        # it is malformed input like any other, not a server error.
        raise APIError(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_request")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's parser accepts NaN and Infinity; JSON does not


def check(body: dict[str, Any], chat: bool, max_n: int) -> int:
    """Refuse what the engine should not see; return the request's cost in sequences."""
    allowed = CHAT_PARAMS if chat else COMPLETION_PARAMS
    for key in body:
        if key not in allowed:
            raise APIError(400, f"unsupported parameter: {key!r}", "unsupported_parameter", key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required and must be a string", "invalid_value", "model")
    for key, value in body.items():
        expected = _TYPES.get(key)
        if expected and value is not None and not _is(value, expected):
            raise APIError(400, f"'{key}' must be {expected}, not {_kind(value)}", "invalid_type", key)
    if "logprobs" in body and body["logprobs"] is not None:
        expected = _BOOL if chat else _INT  # chat: a switch; completions: how many per token
        if not _is(body["logprobs"], expected):
            raise APIError(400, f"'logprobs' must be {expected}, not {_kind(body['logprobs'])}", "invalid_type",
                           "logprobs")
    if not chat and body.get("echo") and body.get("logprobs") is not None:
        # The prompt's own log-probabilities with LoRA enabled (as the engine always is here) kill
        # vLLM's engine core (vllm-project/vllm#16668: the LoRA mapping of prompt logprobs is wrong):
        # one such request would stop every client's answers until the engine restarts.
        raise APIError(400, "'echo' with 'logprobs' (the prompt's log-probabilities) is not supported by this "
                       "server: the engine cannot compute them with LoRA adapters enabled", "unsupported_parameter",
                       "echo")
    if chat:
        _check_messages(body.get("messages"))
    elif "prompt" not in body:
        raise APIError(400, "'prompt' is required", "invalid_value", "prompt")
    return _cost(body, max_n)


def _cost(body: dict[str, Any], max_n: int) -> int:
    """Sequences the engine runs for this request: `n`, or `best_of` candidates; bounded."""
    cost = 1
    for key in ("n", "best_of"):
        value = body.get(key)
        if value is None:
            continue
        if value < 1:
            raise APIError(400, f"'{key}' must be at least 1, got {value}", "invalid_value", key)
        if value > max_n:
            raise APIError(400, f"'{key}' is {value}, above this server's limit of {max_n} (serve.max_n)",
                           "invalid_value", key)
        cost = max(cost, value)
    return cost


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", "invalid_value", "messages")
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{at} must be an object with a 'role' and 'content'", "invalid_type", at)
        role = message.get("role")
        if not isinstance(role, str):
            raise APIError(400, f"{at}.role is required and must be a string", "invalid_value", f"{at}.role")
        if role not in ROLES:
            raise APIError(400, f"{at}.role must be one of {', '.join(map(repr, ROLES))}, not {role!r}",
                           "invalid_value", f"{at}.role")
        _check_content(message, at, role)


def _check_content(message: dict[str, Any], at: str, role: str) -> None:
    content = message.get("content")
    if content is None:
        # An assistant turn may be only tool calls; every other turn says something.
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        raise APIError(400, f"{at}.content is required", "invalid_value", f"{at}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise APIError(400, f"{at}.content must be a string or an array of content parts, not {_kind(content)}",
                       "invalid_type", f"{at}.content")
    for j, part in enumerate(content):
        where = f"{at}.content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise APIError(400, f"{where} must be an object with a 'type'", "invalid_type", where)
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise APIError(400, f"{where}.text must be a string", "invalid_type", f"{where}.text")


def _is(value: Any, expected: str) -> bool:
    if expected == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == _NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, {_BOOL: bool, _STR: str, _OBJECT: dict, _ARRAY: list}[expected])


def _kind(value: Any) -> str:
    """How OpenAI names a JSON value's type in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
