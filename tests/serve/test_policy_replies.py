"""The output check of `policy.mode = "model"` and `"both"`: a reply that begins with the refusal
is cut to exactly it, unstreamed and streamed (Server-Sent Events as vLLM sends them), without a
server (the gateway's part: test_policy.py)."""

from __future__ import annotations

import json

from serve.policy import Replies, cut_reply

REFUSAL = "I can only help with questions about this repository."


def test_an_unstreamed_reply_that_begins_with_the_refusal_is_cut_to_exactly_it():
    data = {"choices": [
        {"index": 0, "message": {"role": "assistant", "content": f" {REFUSAL} But here is a cake recipe."},
         "finish_reason": "length"},
        {"index": 1, "message": {"role": "assistant", "content": "The parser splits lines."}, "finish_reason": "stop"},
    ]}
    assert cut_reply(data, REFUSAL, chat=True)
    assert [c["message"]["content"] for c in data["choices"]] == [REFUSAL, "The parser splits lines."]
    assert data["choices"][0]["finish_reason"] == "stop"
    text = {"choices": [{"index": 0, "text": REFUSAL + " Sure, the recipe:", "finish_reason": "length"}]}
    assert cut_reply(text, REFUSAL, chat=False) and text["choices"][0]["text"] == REFUSAL
    unchanged = {"choices": [{"index": 0, "message": {"content": "I can only guess: it parses."}}]}
    assert not cut_reply(unchanged, REFUSAL, chat=True)
    assert unchanged["choices"][0]["message"]["content"] == "I can only guess: it parses."


def _events(pieces: list[str], chat: bool = True, index: int = 0, finish: str = "length") -> list[dict]:
    out = []
    for i, piece in enumerate(pieces):
        choice = ({"index": index, "delta": {"content": piece} | ({"role": "assistant"} if i == 0 else {})}
                  if chat else {"index": index, "text": piece})
        out.append({"id": "c1", "object": "chat.completion.chunk", "choices": [choice | {"finish_reason": None}]})
    out[-1]["choices"][0]["finish_reason"] = finish
    return out


def _stream(events: list[dict], cut_at: int = 7) -> list[bytes]:
    """The events as vLLM sends them, then `[DONE]`, cut into pieces that split events and lines."""
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return [raw[i: i + cut_at] for i in range(0, len(raw), cut_at)]


def _relay(pieces: list[bytes], chat: bool = True) -> tuple[list[dict], bool, Replies]:
    replies = Replies(REFUSAL, chat)
    out = b"".join(replies.feed(p) for p in pieces) + replies.close()
    events = [e for e in out.split(b"\n\n") if e.strip()]
    assert events[-1] == b"data: [DONE]"
    return [json.loads(e[5:]) for e in events[:-1]], any(b"[DONE]" in e for e in events), replies


def _text(chunks: list[dict], chat: bool = True) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "") if chat else c["choices"][0]["text"]
                   for c in chunks if c["choices"])


def test_a_streamed_refusal_is_cut_to_exactly_the_text_and_ends_with_stop():
    pieces = ["I can", " only help", " with questions about this", " repository. But", " here is", " a recipe."]
    chunks, done, replies = _relay(_stream(_events(pieces)))
    assert _text(chunks) == REFUSAL and done and replies.cut == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    completions, _, _ = _relay(_stream(_events(pieces, chat=False)), chat=False)
    assert _text(completions, chat=False) == REFUSAL


def test_a_streamed_answer_is_relayed_whole_even_when_it_starts_like_the_refusal():
    pieces = ["I can", " only guess", ": the parser", " splits lines."]
    chunks, done, replies = _relay(_stream(_events(pieces, finish="stop")))
    assert _text(chunks) == "".join(pieces) and replies.cut == 0 and done
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    short = ["I can"]  # ended while it could still have become the refusal: sent as it came
    chunks, _, _ = _relay(_stream(_events(short, finish="stop")))
    assert _text(chunks) == "I can"


def test_choices_are_checked_each_on_its_own_and_usage_passes_through():
    first = _events(["I can only help with questions", " about this repository. Anyway"], index=0)
    second = _events(["The parser", " splits lines."], index=1, finish="stop")
    usage = {"id": "c1", "object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}
    events = [first[0], second[0], first[1], second[1], usage]
    chunks, _, replies = _relay(_stream(events, cut_at=5))
    by_index: dict[int, str] = {}
    for c in chunks:
        for choice in c["choices"]:
            by_index[choice["index"]] = by_index.get(choice["index"], "") + (choice["delta"].get("content") or "")
    assert by_index == {0: REFUSAL, 1: "The parser splits lines."} and replies.cut == 1
    assert chunks[-1]["usage"]["total_tokens"] == 21
