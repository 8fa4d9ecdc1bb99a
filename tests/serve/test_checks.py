"""What the gateway refuses before the engine sees it, and the sentence it answers with."""

import pytest

from serve import checks
from serve.errors import APIError, from_engine

CHAT = {"model": "base", "messages": [{"role": "user", "content": "hi"}]}


def refused(fn, *args, **kwargs) -> APIError:
    with pytest.raises(APIError) as e:
        fn(*args, **kwargs)
    return e.value


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,  # deep enough to exhaust the parser's stack
    b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
    b'{"model": NaN}', b'{"model": Infinity}',  # Python's parser takes them; JSON has no such thing
    b'{"n": 1' + b"0" * 5000 + b"}",  # past Python's limit on digits in an int
    b"\xff\xfe{}", b"",
])
def test_bodies_that_do_not_parse_are_invalid_json(raw):
    error = refused(checks.parse, raw)
    assert (error.status, error.code) == (400, "invalid_json")


def test_roles_outside_openais_are_refused_naming_the_message():
    for role in checks.ROLES:
        message = {"role": role, "content": "x", **({"tool_call_id": "1"} if role == "tool" else {})}
        checks.check({**CHAT, "messages": [message]}, chat=True, max_n=8)
    error = refused(checks.check, {**CHAT, "messages": [CHAT["messages"][0], {"role": "wizard", "content": "hi"}]},
                    chat=True, max_n=8)
    assert (error.status, error.code, error.param) == (400, "invalid_value", "messages[1].role")
    assert "'wizard'" in error.message


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "user", "content": 5}, "messages[0].content"),
    ({"role": "user", "content": {"text": "hi"}}, "messages[0].content"),
    ({"role": "user"}, "messages[0].content"),
    ({"role": "user", "content": [{"text": "no type"}]}, "messages[0].content[0]"),
    ({"role": "user", "content": [{"type": "text", "text": 3}]}, "messages[0].content[0].text"),
    ("hello", "messages[0]"),
])
def test_a_malformed_message_gets_one_sentence_and_its_param(message, param):
    error = refused(checks.check, {**CHAT, "messages": [message]}, chat=True, max_n=8)
    assert error.status == 400 and error.param == param
    assert error.message.startswith(param) and "\n" not in error.message


def test_content_parts_and_a_tool_call_only_assistant_turn_pass():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
        {"role": "tool", "content": "42", "tool_call_id": "1"},
    ]
    assert checks.check({**CHAT, "messages": messages}, chat=True, max_n=8) == 1


def test_n_and_best_of_are_bounded_and_are_the_requests_cost():
    assert checks.check({**CHAT, "n": 8}, chat=True, max_n=8) == 8
    assert checks.check({"model": "base", "prompt": "x", "n": 2, "best_of": 5}, chat=False, max_n=8) == 5
    for body, chat, param in [({**CHAT, "n": 1000}, True, "n"), ({**CHAT, "n": 0}, True, "n"),
                              ({"model": "base", "prompt": "x", "best_of": 9}, False, "best_of")]:
        error = refused(checks.check, body, chat=chat, max_n=8)
        assert (error.status, error.code, error.param) == (400, "invalid_value", param)


@pytest.mark.parametrize(("param", "value", "expected"), [
    ("temperature", "hot", "a number"), ("max_tokens", 1.5, "an integer"), ("n", True, "an integer"),
    ("stream", "yes", "a boolean"), ("tools", {}, "an array"), ("logprobs", 3, "a boolean"),
])
def test_a_parameter_of_the_wrong_type_is_named(param, value, expected):
    error = refused(checks.check, {**CHAT, param: value}, chat=True, max_n=8)
    assert (error.status, error.code, error.param) == (400, "invalid_type", param)
    assert expected in error.message
    assert checks.check({**CHAT, param: None}, chat=True, max_n=8) == 1  # null means "not set"


def test_the_engines_pydantic_dump_becomes_one_sentence():
    dump = ("22 validation errors:\n  {'type': 'string_type', 'loc': "
            "'body.messages.0.ChatCompletionDeveloperMessageParam.content', 'msg': 'Input should be a valid "
            "string', 'input': 5}\n  {'type': 'missing', 'loc': 'body.x', 'msg': 'Field required'}")
    response = from_engine(400, {"error": {"message": dump, "code": 400,
                                           "param": "body.messages.0.ChatCompletionDeveloperMessageParam.content"}})
    import json

    error = json.loads(response.body)["error"]
    assert error == {"message": "messages[0].content: input should be a valid string", "type": "invalid_request_error",
                     "param": "messages[0].content", "code": "invalid_value"}
