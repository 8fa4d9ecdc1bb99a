"""An adapter from `repotune train`, served by vLLM: it loads, and answers as PEFT does."""

from __future__ import annotations

import uuid

import openai
import pytest

from repotune import config as cfg
from tests import training

from .conftest import API_KEY

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _served(server, t: training.Trained) -> str:
    """`t`'s adapter registered and promoted on the shared server; its greedy answer to `t`'s question."""
    lineage = f"trained_{uuid.uuid4().hex[:6]}"  # the shared server: a lineage of its own
    for args in (("register", str(t.adapter)), ("promote", "v1", "--reason", "trained here")):
        done = server.cli("adapters", *args, "--lineage", lineage)
        assert done.returncode == 0, done.stderr
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    reply = client.chat.completions.create(model=lineage, messages=[{"role": "user", "content": t.question}],
                                           temperature=0, max_tokens=48)
    return reply.choices[0].message.content or ""


def test_vllm_serves_a_trained_adapter_with_the_same_greedy_answer_as_peft(server, trained, tiny):
    _, t = trained
    served = _served(server, t)
    assert t.subject in served
    assert served == training.greedy(tiny.path, t.adapter, t.question, tokens=48).strip()


def test_vllm_serves_a_lora_on_the_input_embeddings_as_peft_does(server, tiny, tmp_path):
    """A LoRA on `embed_tokens` too (Llama's embeddings, which vLLM's LoRA layers cover): served, it
    answers greedily exactly as PEFT does, and the embedding's part of it counts in that answer."""
    import torch
    from safetensors.torch import load_file, save_file

    _, t = training.trained(tmp_path, **training.MEMORISE, target_modules=[*cfg.LORA_TARGETS, "embed_tokens"],
                            embedding_learning_rate=5e-4)
    served = _served(server, t)
    assert t.subject in served
    assert served == training.greedy(tiny.path, t.adapter, t.question, tokens=48).strip()
    # Without the embedding's LoRA the same adapter answers otherwise: the engine applied it.
    cut = tmp_path / "without-embeddings"
    cut.mkdir()
    weights = load_file(t.adapter / "adapter_model.safetensors")
    save_file({k: torch.zeros_like(v) if "lora_embedding_B" in k else v for k, v in weights.items()},
              cut / "adapter_model.safetensors")
    (cut / "adapter_config.json").write_text((t.adapter / "adapter_config.json").read_text())
    assert training.greedy(tiny.path, cut, t.question, tokens=48).strip() != served
