"""Asking a model through the live OpenAI-compatible endpoint: what would be served is what is measured.

`Endpoint` answers the suites' questions through `repotune serve` (gateway and vLLM) with
the official `openai` client: greedy (temperature 0), a fixed token limit, the questions
in a fixed order, a bounded number in flight. It does not score multiple choice: that
needs the log-probabilities of a given reply (the prompt's), which vLLM cannot compute
with LoRA enabled (the server refuses to ask; `eval.judge` scores options in-process).

An engine that restarts answers 503 for a while: each request is retried for up to
`wait_s` seconds in all, then the eval fails with an `EndpointError` that says so, and
the caller changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
MAX_NEW_TOKENS = 48
RETRIED = (502, 503, 504)


class EndpointError(Exception):
    """The endpoint could not answer (gone, restarting too long, or refusing); the message says which."""


@dataclass
class Endpoint:
    url: str  # the server, e.g. http://127.0.0.1:8000
    key: str
    model: str  # "base", "<lineage>@v<N>"
    concurrency: int  # `eval.concurrency`: questions in flight at once
    wait_s: float = 180.0  # how long one request may wait out an engine that is restarting
    on_missing: Callable[[], object] | None = None  # called once when the model is gone (404), then retried
    _client: Any = field(default=None, repr=False)

    @property
    def client(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=300)
        return self._client

    def answer(self, questions: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        """Greedy replies, one per question, in order."""
        return self.answer_turns([(q,) for q in questions], max_new_tokens)

    def generate(self, questions: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[tuple[str, bool]]:
        """Greedy replies, each with whether it ended by itself rather than at `max_new_tokens`, in order."""
        return self._map(lambda q: self._reply((q,), max_new_tokens), questions)

    def answer_turns(self, conversations: Sequence[Sequence[str]], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        """Greedy replies to conversations of user turns (a request split over turns), in order."""
        return [text for text, _ in self._map(lambda turns: self._reply(turns, max_new_tokens), conversations)]

    def _reply(self, turns: Sequence[str], max_new_tokens: int) -> tuple[str, bool]:
        r = self._call(lambda: self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": t} for t in turns], temperature=0,
            max_tokens=max_new_tokens))
        return (r.choices[0].message.content or "").strip(), r.choices[0].finish_reason == "stop"

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, items))

    def _call(self, request: Callable[[], T]) -> T:
        import openai

        deadline, delay, restored = time.monotonic() + self.wait_s, 1.0, False
        while True:
            try:
                return request()
            except openai.NotFoundError as e:
                if restored or self.on_missing is None:
                    raise EndpointError(f"{self.url} does not serve {self.model}: {_message(e)}") from None
                self.on_missing()  # e.g. the engine restarted and the held version is loaded again
                restored = True
                continue
            except openai.APIStatusError as e:
                if e.status_code not in RETRIED:
                    raise EndpointError(f"{self.url} refused a request for {self.model}: "
                                        f"{e.status_code} {_message(e)}") from None
                why = f"{e.status_code} {_message(e)}"
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                why = f"{type(e).__name__}: {e}"
            if time.monotonic() + delay > deadline:
                raise EndpointError(f"{self.url} did not answer for {self.model} within {self.wait_s:.0f} s "
                                    f"(last: {why}); the engine is gone or restarting") from None
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(e)[:300]
