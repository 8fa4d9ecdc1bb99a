"""Train backends: how the base model and its LoRA layers are loaded, by name.

`trl` loads with transformers and PEFT and runs anywhere (CPU or GPU; a 4-bit base
through bitsandbytes when `train.load_in_4bit` is set and a GPU is there). `unsloth`
loads with Unsloth's patched kernels, on a GPU only. Both then train with the same loop
(`tuner.train.sft`: TRL's SFTTrainer), so a backend changes speed and memory, never the
recipe. `auto` takes unsloth where it imports and trl otherwise.

Unsloth is imported only inside its backend, and any exception counts as "not here":
without a GPU its import fails with errors other than ImportError, and it patches
transformers as it imports, which must not happen to a process that will not use it.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Protocol

from tuner.train import sft
from tuner.train.sft import Job, Trained


class BackendError(Exception):
    """A backend that cannot run here; the message says why."""


class Backend(Protocol):
    name: str

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""

    def train(self, job: Job) -> Trained: ...


def training_dtype(name: str, base: Path) -> str:
    """The dtype the model in `base` is trained in for `train.dtype = name`. "auto" is the model's own,
    except on a CPU whose matrix products in that dtype are many times slower than in float32 (no native
    bfloat16 or float16: a fallback kernel; one layer's products 42 times slower on a 2-core AMD EPYC
    with AVX2, benchmarks/RESULTS.md, "Training"), where it is float32."""
    import json

    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "auto"
    try:
        config = json.loads((base / "config.json").read_text())
    except (OSError, ValueError):
        return "auto"
    own = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return "float32" if own in ("bfloat16", "float16") and _slow_on_cpu(own) else own


@functools.cache
def _slow_on_cpu(dtype: str) -> bool:
    """Whether this CPU multiplies matrices in `dtype` more than twice as slowly as in float32 (timed once
    per process on 128 x 128 products: well under a second, even where it is slow).

    Each kind's time is the fastest of several products: a product of float32 takes about 0.05 ms,
    less than one time slice of the scheduler, so on a machine busy with other work one preempted
    product would make float32 look as slow as the fallback kernel (a run on two cores beside a
    test suite trained smol in bfloat16 at 3 tokens/s instead of 88)."""
    import torch

    def seconds(kind: Any) -> float:
        a, b = torch.randn(128, 128, dtype=kind), torch.randn(128, 128, dtype=kind)
        a @ b
        times = []
        for _ in range(7):
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
        return min(times)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels compared, not how the threads of one fare against other work
    try:
        return seconds(getattr(torch, dtype)) > 2 * seconds(torch.float32)
    finally:
        torch.set_num_threads(threads)


def _dtype(job: Job) -> Any:
    import torch

    name = training_dtype(job.cfg.dtype, job.base)
    return "auto" if name == "auto" else getattr(torch, name)


def _lora_config(job: Job) -> Any:
    from peft import LoraConfig

    c = job.cfg
    return LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                      target_modules=list(c.target_modules), bias="none", task_type="CAUSAL_LM")


class TrlBackend:
    name = "trl"

    def unavailable(self) -> str | None:
        try:
            import trl  # noqa: F401
        except ImportError as e:
            return f"trl is not installed ({e})"
        return None

    def train(self, job: Job) -> Trained:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(job.cfg.seed)
        kwargs: dict[str, Any] = {"dtype": _dtype(job)}
        if job.cfg.load_in_4bit:
            if not torch.cuda.is_available():
                raise BackendError("train.load_in_4bit (QLoRA) needs a CUDA GPU; none is here")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(job.base)
        model = AutoModelForCausalLM.from_pretrained(job.base, **kwargs)
        if job.cfg.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if job.init_adapter is not None:
            model = PeftModel.from_pretrained(model, job.init_adapter, is_trainable=True)
            return sft.run(job, model, tokenizer, None, self.name)
        return sft.run(job, model, tokenizer, _lora_config(job), self.name)


class UnslothBackend:
    name = "unsloth"

    def unavailable(self) -> str | None:
        try:
            import unsloth  # noqa: F401
        except ImportError:
            return "unsloth is not installed (it comes with the gpu extra)"
        except Exception as e:  # without a GPU it raises at import, and not ImportError
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return f"unsloth does not import ({type(e).__name__}: {first})"
        return None

    def train(self, job: Job) -> Trained:
        from unsloth import FastLanguageModel

        c = job.cfg
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(job.base), max_seq_length=c.max_seq_len,
            dtype=None if c.dtype == "auto" else _dtype(job), load_in_4bit=c.load_in_4bit)
        if job.init_adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, job.init_adapter, is_trainable=True)
        else:
            model = FastLanguageModel.get_peft_model(
                model, r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                target_modules=list(c.target_modules), bias="none", random_state=c.seed,
                use_gradient_checkpointing=False)
        return sft.run(job, model, tokenizer, None, self.name)


BACKENDS: dict[str, Backend] = {"trl": TrlBackend(), "unsloth": UnslothBackend()}


def pick(name: str) -> tuple[Backend, str]:
    """The backend `name` names (auto: unsloth where it runs, else trl), and a line saying which and why."""
    if name == "auto":
        why_not = BACKENDS["unsloth"].unavailable()
        if why_not is None:
            return BACKENDS["unsloth"], "backend unsloth (auto: it imports here)"
        trl_why_not = BACKENDS["trl"].unavailable()
        if trl_why_not:
            raise BackendError(f"no train backend can run here: {why_not}; {trl_why_not}")
        return BACKENDS["trl"], f"backend trl (auto: {why_not})"
    if name not in BACKENDS:
        raise BackendError(f"unknown train backend {name!r}; backends: auto, {', '.join(BACKENDS)}")
    why_not = BACKENDS[name].unavailable()
    if why_not:
        raise BackendError(f"the {name} backend cannot run here: {why_not}")
    return BACKENDS[name], f"backend {name}"
