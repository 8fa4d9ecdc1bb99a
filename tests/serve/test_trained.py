"""An adapter from `repotune train`, served by vLLM: it loads, and answers as PEFT does."""

from __future__ import annotations

import uuid

import openai
import pytest

from tests import training

from .conftest import API_KEY

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_vllm_serves_a_trained_adapter_with_the_same_greedy_answer_as_peft(server, trained, tiny):
    _, t = trained
    lineage = f"trained_{uuid.uuid4().hex[:6]}"  # the shared server: a lineage of its own
    for args in (("register", str(t.adapter)), ("promote", "v1", "--reason", "trained here")):
        done = server.cli("adapters", *args, "--lineage", lineage)
        assert done.returncode == 0, done.stderr
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    reply = client.chat.completions.create(model=lineage, messages=[{"role": "user", "content": t.question}],
                                           temperature=0, max_tokens=48)
    served = reply.choices[0].message.content or ""
    assert t.subject in served
    assert served == training.greedy(tiny.path, t.adapter, t.question, tokens=48).strip()
