"""The base's own answers for the general replay, asked of a running server of the same base."""

from __future__ import annotations

import json
from dataclasses import replace

from eval.questions import load
from eval.scoring import matches
from repotune import models
from serve.engine import free_port
from tests.serve.conftest import ADMIN_KEY, Server
from tuner.data import own


def test_a_server_of_the_same_base_answers_the_replayed_questions(server: Server, tiny: models.Base, tmp_path):
    questions = load(split="train")[:12]
    served = own.served_base(server.url, ADMIN_KEY, tiny, concurrency=4, wait_s=60)
    assert served is not None
    asked: list[int] = []

    def counted(texts: list[str], max_tokens: int) -> list[tuple[str, bool]]:
        asked.append(len(texts))
        return served(texts, max_tokens)

    got = own.answers(tiny, questions, tmp_path, server=lambda: counted)
    assert sum(asked) == len(questions)  # every answer came from the server; none was made in-process
    assert set(got) == {q.id for q in questions} and all(got.values())
    assert sum(matches(got[q.id], q.accepted) for q in questions) >= 10  # tiny knows the set: the answers are its own
    cached = json.loads(own.cache_path(tmp_path, tiny).read_text())
    assert {q.id for q in questions} <= set(cached)
    # a second build reads the cache and asks no one
    assert own.answers(tiny, questions, tmp_path, server=lambda: counted) == got and sum(asked) == len(questions)


def test_a_server_of_another_base_or_none_or_no_admin_key_is_not_asked(server: Server, tiny: models.Base):
    other = replace(tiny, fingerprint="f" * 16)
    assert own.served_base(server.url, ADMIN_KEY, other, concurrency=4, wait_s=60) is None
    assert own.served_base(server.url, None, tiny, concurrency=4, wait_s=60) is None
    assert own.served_base(server.url, "not-a-key-it-knows", tiny, concurrency=4, wait_s=60) is None  # 401
    assert own.served_base(f"http://127.0.0.1:{free_port()}", ADMIN_KEY, tiny, concurrency=4, wait_s=60) is None
