"""The domain restriction at the gateway: which requests the model may answer, and its replies.

The decision itself (`repotune.policy.decide`: every user turn scored against the domain
index, from the words alone) is made here before a request reaches the model. A refused
request is answered by the gateway as an ordinary completion whose content is exactly
`policy.refusal` (`serve.openai_api`); requests made with the admin key are never scored
(eval and a teacher need the model's own answers).

`policy.mode` says which checks run: `gate` scores the request before the model sees it;
`model` leaves the refusing to the model (an adapter trained with refusals,
`policy.train_refusals`) and checks its reply: one that begins with the refusal text is
cut to exactly it (`Replies`), so a model that refuses and then goes on ("…, but here is
the recipe anyway") says only the refusal; `both` does both; `off` neither.
"""

from __future__ import annotations

import json
import logging
from contextlib import closing
from pathlib import Path
from typing import Any

from repotune import db as store
from repotune import relevance
from repotune.policy import Decision, decide, refused, user_turns
from repotune.relevance import DomainIndex

log = logging.getLogger("repotune.policy")


class Policy:
    """The gateway's policy: its settings, the loaded index, and the decisions it counts."""

    def __init__(self, mode: str, refusal: str, threshold: float, data_dir: Path | None = None,
                 lineage: str = "", index_skip: tuple[str, ...] = (), log_text: bool = False,
                 score_parts: bool = False) -> None:
        self.mode, self.refusal, self.threshold, self.configured = mode, refusal, threshold, threshold
        self.threshold_from = "config"
        self.data_dir, self.lineage, self.index_skip, self.log_text = data_dir, lineage, index_skip, log_text
        self.score_parts = score_parts
        self.index: DomainIndex | None = None
        self.refusal_tokens: int | None = None  # the refusal's length in the base's tokens, asked once

    @property
    def active(self) -> bool:
        """Whether the gate scores requests (an index is loaded for it)."""
        return self.mode in ("gate", "both")

    @property
    def checks_replies(self) -> bool:
        """Whether the model's replies are checked for its own refusal."""
        return self.mode in ("model", "both")

    def load(self) -> DomainIndex | None:
        """(Re)load the saved index; build it from the store when none was saved yet (a store
        ingested before the index existed). None when nothing is ingested: every request passes."""
        if self.data_dir is None or not self.active:
            return None
        index = relevance.load(self.data_dir)
        if store.db_path(self.data_dir).is_file():
            with closing(store.open_db(store.db_path(self.data_dir))) as db:
                if index is None:
                    index = relevance.rebuild(db, self.data_dir, self.lineage, self.index_skip)
                if index is not None:  # the threshold calibrated for this index, if any
                    self.threshold, self.threshold_from = relevance.threshold(db, index.hash, self.configured)
        self.index = index
        return index

    def check(self, body: dict[str, Any]) -> Decision:
        turns = user_turns(body)
        decision = decide(turns, self.index, self.threshold, self.refusal, self.score_parts)
        if decision.reason == "off_domain":
            said = f": {turns!r}" if self.log_text else ""
            log.info("refused (relevance %.3f below %.3f)%s", decision.score or 0.0, self.threshold, said)
        return decision


def cut_reply(data: dict[str, Any], refusal: str, chat: bool) -> bool:
    """Cut every choice of an unstreamed reply that begins with the refusal to exactly it, ended
    with finish_reason "stop"; whether any was cut."""
    cut = False
    for choice in data.get("choices") or []:
        holder, key = (choice.get("message") or {}, "content") if chat else (choice, "text")
        text = holder.get(key)
        if isinstance(text, str) and refused(text, refusal):
            holder[key], choice["finish_reason"], cut = refusal, "stop", True
    return cut


class Replies:
    """The same check on a streamed reply, event by event (Server-Sent Events, OpenAI's chunks).

    A choice's text is held back while it could still become the refusal (it is a prefix of
    it, white space aside); once it cannot, what was held is sent as it came and the rest
    flows through. Once it holds the refusal, one chunk with exactly the refusal and one with
    finish_reason "stop" are sent in place of what was held, and the choice's later chunks
    are dropped. Chunks without choices (usage) and `[DONE]` pass through.
    """

    def __init__(self, refusal: str, chat: bool) -> None:
        self.refusal, self.chat = refusal, chat
        self.buffer = b""
        self.held: dict[int, list[dict[str, Any]]] = {}
        self.text: dict[int, str] = {}
        self.state: dict[int, str] = {}  # index → deciding, passing, refused
        self.cut = 0

    def feed(self, data: bytes) -> bytes:
        """The bytes to send on for `data` received."""
        self.buffer += data
        out = b""
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            out += self._event(event)
        return out

    def close(self) -> bytes:
        """What is still held when the stream ends: sent as it came."""
        rest, self.buffer = self.buffer, b""
        return self._release() + (rest + b"\n\n" if rest.strip() else b"")

    def _release(self) -> bytes:
        out = b"".join(_sse(chunk) for index in sorted(self.held) for chunk in self.held[index])
        self.held.clear()
        return out

    def _event(self, event: bytes) -> bytes:
        payload = event.strip()
        if not payload.startswith(b"data:"):
            return event + b"\n\n"
        body = payload[5:].strip()
        try:
            chunk = json.loads(body)
        except ValueError:  # [DONE], or what is not a chunk: as it came, after anything still held
            return self._release() + event + b"\n\n"
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not choices:
            return event + b"\n\n"
        out = b""
        for choice in choices:
            out += self._choice(chunk, choice)
        return out

    def _choice(self, chunk: dict[str, Any], choice: dict[str, Any]) -> bytes:
        index = int(choice.get("index") or 0)
        one = {**chunk, "choices": [choice]}
        state = self.state.setdefault(index, "deciding")
        if state == "passing":
            return _sse(one)
        if state == "refused":
            return b""
        delta = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
        self.text[index] = self.text.get(index, "") + (delta or "")
        self.held.setdefault(index, []).append(one)
        said = self.text[index].lstrip()
        if refused(said, self.refusal):
            self.state[index], self.cut = "refused", self.cut + 1
            self.held.pop(index)
            return _sse(self._as(one, self.refusal, None)) + _sse(self._as(one, "", "stop"))
        if not self.refusal.startswith(said) or choice.get("finish_reason"):
            self.state[index] = "passing"
            return b"".join(_sse(c) for c in self.held.pop(index))
        return b""

    def _as(self, chunk: dict[str, Any], text: str, finish: str | None) -> dict[str, Any]:
        choice = dict(chunk["choices"][0])
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": text} if text else {}
        else:
            choice["text"] = text
        choice["finish_reason"] = finish
        return {**chunk, "choices": [choice]}


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
