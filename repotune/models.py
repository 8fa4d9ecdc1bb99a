"""Base models: resolving `model.base` to a folder, and the fingerprint of what is there.

`builtin:tiny` is built on first use (see `repotune.builtin`); any other value is a local
model folder or a Hugging Face model id, fetched with the ordinary hub client into the
ordinary hub cache, so transformers and vLLM load all three the same way.

A fingerprint identifies the exact base an adapter or dataset was made for: a hash of
the config (minus fields that only record who saved it), the tokenizer files and the
weights' content. Two builds of builtin:tiny from different `general.jsonl` files get
different fingerprints even when shapes and vocabulary agree. Hashing multi-GB weights
is done once per file: hub downloads are content-addressed (the blob's name is its
sha256), and other files' digests are cached by path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune import builtin, manifests, smol

BUILTIN = {builtin.NAME, smol.NAME}
MANIFEST = manifests.FILE

_CONFIG_VOLATILE = ("transformers_version", "_name_or_path", "_commit_hash")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class ModelError(Exception):
    """A base model that cannot be resolved or used; the message says why and what to do."""


class IncompatibleBase(ModelError):
    """An adapter or dataset made for another base model."""


@dataclass(frozen=True)
class Base:
    spec: str  # as configured: builtin:tiny, a hub id or a path
    path: Path  # a Hugging Face model folder
    fingerprint: str


def resolve(spec: str, progress: builtin.Progress | None = None) -> Base:
    """The base model `spec` names, built or fetched if needed, with its fingerprint."""
    path = resolve_path(spec, progress)
    return Base(spec=spec, path=path, fingerprint=fingerprint(path))


def resolve_path(spec: str, progress: builtin.Progress | None = None) -> Path:
    if spec.startswith("builtin:"):
        return build_builtin(spec, progress).path
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} is not a model folder (no config.json)")
        return local.resolve()
    if spec.startswith((".", "/", "~")):
        raise ModelError(f"model folder {spec} does not exist")
    return _from_hub(spec)


def build_builtin(spec: str, progress: builtin.Progress | None = None) -> builtin.Built:
    """A built-in base model (`builtin:tiny`, `builtin:smol`), built once per machine."""
    if spec == builtin.NAME:
        return builtin.build_model(progress=progress)
    if spec == smol.NAME:
        try:
            return smol.build_model(progress=progress)
        except smol.SmolError as e:
            raise ModelError(str(e)) from None
    raise ModelError(f"unknown built-in model {spec!r}; built-in models: {', '.join(sorted(BUILTIN))}")


def tokenizer_path(spec: str) -> Path:
    """A folder holding the base model's tokenizer, without building or fetching the weights."""
    if spec.startswith("builtin:"):
        if spec == smol.NAME:  # its tokenizer comes with its weights, from the same file
            return build_builtin(spec).path
        if spec not in BUILTIN:
            raise ModelError(f"unknown built-in model {spec!r}; built-in models: {', '.join(sorted(BUILTIN))}")
        return builtin.build_tokenizer().path
    local = Path(spec).expanduser()
    if local.exists():
        return resolve_path(spec)
    return _from_hub(spec, ["tokenizer*", "special_tokens_map.json", "*.tiktoken", "vocab*", "merges.txt"])


def _from_hub(repo_id: str, patterns: list[str] | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns or _HUB_FILES))
    except HFValidationError as e:
        raise ModelError(f"{repo_id!r} is neither a local model folder nor a Hugging Face model id") from e
    except GatedRepoError as e:
        raise ModelError(f"model {repo_id!r} is gated: accept its licence on the Hub and set HF_TOKEN") from e
    except RepositoryNotFoundError as e:
        raise ModelError(f"model {repo_id!r} was not found on the Hugging Face Hub") from e
    except (LocalEntryNotFoundError, OSError) as e:
        raise ModelError(
            f"cannot fetch model {repo_id!r}: the Hugging Face Hub is not reachable (no network) and "
            "the model is not in the local hub cache. Download it where there is a network "
            "(`hf download {repo_id}`), copy the folder here and set model.base to its path, "
            'or use model.base = "builtin:tiny"'
        ) from e


def fingerprint(path: Path) -> str:
    """A short hash of a model folder's config, tokenizer and weights."""
    h = hashlib.sha256()
    config = json.loads((path / "config.json").read_text())
    for key in _CONFIG_VOLATILE:
        config.pop(key, None)
    h.update(b"config\0" + json.dumps(config, sort_keys=True).encode())
    for name in _TOKENIZER_FILES:
        if (path / name).is_file():
            h.update(f"\0{name}\0".encode() + hashlib.sha256((path / name).read_bytes()).digest())
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not weights:
        raise ModelError(f"{path} has no weights (*.safetensors or *.bin)")
    for file in weights:
        h.update(f"\0{file.name}\0{file_digest(file)}".encode())
    return h.hexdigest()[:16]


def file_digest(file: Path) -> str:
    """sha256 of a file's content: free for hub blobs, computed once for anything else."""
    real = file.resolve()
    if real.parent.name == "blobs" and len(real.name) == 64:
        return real.name  # the hub stores LFS files under their sha256
    stat = real.stat()
    cache_file = builtin.cache_root() / "digests.json"
    cache: dict[str, Any] = {}
    if cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    entry = cache.get(str(real))
    if entry and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with real.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if stat.st_size > 64 << 20:  # only worth remembering for big files
        cache[str(real)] = {"stamp": stamp, "sha256": digest.hexdigest()}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    return digest.hexdigest()


# --- what adapters and datasets record of their base ----------------------------------


def record_base(folder: Path, base: Base) -> None:
    """Write the base an artifact was made for into its `manifest.json`, keeping other fields."""
    manifest = manifests.read_adapter(folder)
    manifest.base_model, manifest.base_fingerprint = base.spec, base.fingerprint
    manifests.write(folder, manifest)


def ensure_same_base(
    what: str, made_for: str, base_spec: str, base_fingerprint: str, made_for_spec: str | None = None
) -> None:
    """The one check that `what` (an adapter, a dataset, a registered version) was made for this base.

    Every place that uses an artifact on a base calls this, so the rule and its message are
    the same everywhere: the registry, the promotion, the server's load, the tuner, eval.
    """
    if made_for != base_fingerprint:
        raise IncompatibleBase(
            f"{what} was made for {made_for_spec or 'another base'} with fingerprint {made_for}, but the base "
            f"model is {base_spec} with fingerprint {base_fingerprint}; it would answer wrongly on this base, "
            "so it is refused and cannot be served on it (retrain it on the current base)"
        )


def check_base(folder: Path, base: Base, what: str = "adapter") -> None:
    """Refuse an artifact made for another base, or one that does not say which."""
    try:
        manifest = manifests.read(folder, manifests.Manifest)
    except manifests.ManifestError as e:
        raise ModelError(str(e)) from None
    if not manifest.base_fingerprint:
        raise IncompatibleBase(
            f"{what} {folder} does not record the base model it was made for "
            f"({MANIFEST} with base_fingerprint); refusing to use it on {base.spec} ({base.fingerprint})"
        )
    ensure_same_base(f"{what} {folder}", manifest.base_fingerprint, base.spec, base.fingerprint, manifest.base_model)
