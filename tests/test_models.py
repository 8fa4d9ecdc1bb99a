"""Model resolution and fingerprints: what a base is, and refusing what was made for another."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from repotune import models


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_a_local_folder_resolves_to_itself_with_a_stable_fingerprint(micro):
    base = models.resolve(str(micro))
    assert base.path == micro and base.spec == str(micro)
    assert len(base.fingerprint) == 16
    assert models.resolve(str(micro)).fingerprint == base.fingerprint


def test_fingerprint_follows_weights_and_tokenizer_not_bookkeeping(micro, tmp_path):
    fp = models.fingerprint(micro)

    saved_by_other_version = copy(micro, tmp_path / "a")
    config = json.loads((saved_by_other_version / "config.json").read_text())
    config["transformers_version"] = "0.0.1"
    (saved_by_other_version / "config.json").write_text(json.dumps(config, indent=4))
    assert models.fingerprint(saved_by_other_version) == fp

    other_weights = copy(micro, tmp_path / "b")
    tensors = load_file(other_weights / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, other_weights / "model.safetensors", metadata={"format": "pt"})
    assert models.fingerprint(other_weights) != fp

    other_template = copy(micro, tmp_path / "c")
    tok_config = json.loads((other_template / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = "{{ messages[0]['content'] }}"
    (other_template / "tokenizer_config.json").write_text(json.dumps(tok_config))
    assert models.fingerprint(other_template) != fp


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:huge", "unknown built-in model 'builtin:huge'; built-in models: builtin:smol, builtin:tiny"),
        ("./no/such/folder", "model folder ./no/such/folder does not exist"),
        ("not a valid id!!", "neither a local model folder nor a Hugging Face model id"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(models.ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        models.resolve(spec)


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(models.ModelError, match="not a model folder"):
        models.resolve(str(tmp_path))


def test_a_hub_id_without_network_names_the_id_and_says_so(tmp_path, monkeypatch):
    # A hub endpoint on a local port nobody listens on: refused at once, like no network.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    start = time.perf_counter()
    with pytest.raises(models.ModelError) as e:
        models.resolve("Qwen/Qwen2.5-0.5B-Instruct")
    assert time.perf_counter() - start < 60
    message = str(e.value)
    assert "'Qwen/Qwen2.5-0.5B-Instruct'" in message and "not reachable (no network)" in message
    assert "Traceback" not in message


def test_artifacts_record_their_base_and_are_refused_on_another(micro, tmp_path):
    base = models.resolve(str(micro))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(models.IncompatibleBase, match="does not record the base model"):
        models.check_base(adapter, base)

    (adapter / "manifest.json").write_text(json.dumps({"created": "2026-01-01", "dataset": "abc"}))
    models.record_base(adapter, base)
    models.check_base(adapter, base)  # accepted
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["dataset"] == "abc" and manifest["base_fingerprint"] == base.fingerprint

    other = models.Base(spec="builtin:tiny", path=micro, fingerprint="0" * 16)
    with pytest.raises(models.IncompatibleBase) as e:
        models.check_base(adapter, other)
    assert base.fingerprint in str(e.value) and "0" * 16 in str(e.value) and "refused" in str(e.value)


def test_big_weight_digests_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    big = tmp_path / "model.safetensors"
    with big.open("wb") as f:
        f.truncate(65 << 20)
    first = models.file_digest(big)
    digests = tmp_path / "cache" / "repotune" / "digests.json"
    remembered = json.loads(digests.read_text())
    assert remembered[str(big.resolve())]["sha256"] == first
    remembered[str(big.resolve())]["sha256"] = "remembered"
    digests.write_text(json.dumps(remembered))
    assert models.file_digest(big) == "remembered"  # not hashed again
    stat = big.stat()
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert models.file_digest(big) == first  # touched: hashed again
