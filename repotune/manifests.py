"""What a dataset's and an adapter's `manifest.json` record, read and written here only.

A manifest says what an artifact was made from: the base model (spec and fingerprint),
the ingest cursor its knowledge reaches, the dataset it was trained on, and, once it has
been evaluated, its scores and the gate's decision. Fields this version does not know
are kept as they were (`extra="allow"`), so a manifest written by a newer repotune
survives being read and written by an older one.

A file that is not JSON, or whose known fields have the wrong type, is refused with its
path and the field named: nothing downstream guesses at a half-read manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FILE = "manifest.json"


class ManifestError(Exception):
    """A manifest that cannot be read; the message names the file and the field."""


class Manifest(BaseModel):
    """What every manifest records: the base it was made for and how far its knowledge reaches."""

    model_config = ConfigDict(extra="allow")

    base_model: str | None = None
    base_fingerprint: str | None = None
    ingest_cursor: int | None = None  # the last ingest event the artifact's knowledge includes
    created_at: str | None = None

    def dump(self) -> dict[str, Any]:
        """Plain JSON data, unknown fields included, unset optional fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


class GateDecision(BaseModel):
    """What the eval gate decided of an adapter against the base, and why."""

    model_config = ConfigDict(extra="allow")

    decision: Literal["promote", "reject"]
    reasons: list[str] = Field(default_factory=list)
    decided_at: str | None = None


class Coverage(BaseModel):
    """The part of the history a run trained on when its budget could not hold it all (newest first)."""

    facts: int  # commits, pull requests and files trained on
    of: int  # of those in the examples the strategy chose
    since: str | None = None  # the oldest trained fact's date
    until: str | None = None  # the newest's


class TrainingRecord(BaseModel):
    """How an adapter was trained: its run, inputs, every hyper-parameter and the run's figures."""

    model_config = ConfigDict(extra="allow")

    run: str  # the run's key: dataset, base, strategy, starting adapter and hyper-parameters hashed
    backend: str
    strategy: str
    started_from: str | None = None  # "<lineage>@v<N>" for an incremental run, else from the base
    examples: int = 0
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    libraries: dict[str, str] = Field(default_factory=dict)
    loss_form: str = ""
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    stopped: str = "done"
    covers: Coverage | None = None  # set when a budget left older facts out; None: all of them
    resumed_from_step: int | None = None
    train_loss: list[tuple[int, float]] = Field(default_factory=list)
    val_loss: list[tuple[int, float]] = Field(default_factory=list)
    replay_kl: list[tuple[int, float]] = Field(default_factory=list)  # (step, KL to the base on general replay)


class AdapterManifest(Manifest):
    lineage: str | None = None
    version: int | None = None
    lora_rank: int | None = None
    dataset: str | None = None  # the hash of the dataset it was trained on
    training: TrainingRecord | None = None
    scores: dict[str, float] = Field(default_factory=dict)  # eval suite → score, higher is better
    gate: GateDecision | None = None


class DatasetManifest(Manifest):
    hash: str
    lineage: str
    repo: str | None = None
    new_since: dict[str, Any] = Field(default_factory=dict)  # the promoted adapter's cursor it starts after
    counts: dict[str, int] = Field(default_factory=dict)
    generators: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    refusals: bool = False
    teacher: dict[str, Any] | None = None


M = TypeVar("M", bound=Manifest)


def parse(kind: type[M], data: Any, where: str) -> M:
    """`data` (decoded JSON) as a `kind`, or ManifestError naming `where` and the field."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where} is not a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}" for err in e.errors()
        )
        raise ManifestError(f"{where} is not a valid {kind.__name__}: {problems}") from None


def read(folder: Path, kind: type[M]) -> M:
    """The manifest in `folder`; an empty one of `kind` if there is none (an adapter trained elsewhere)."""
    path = folder / FILE
    if not path.is_file():
        return parse(kind, {}, str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{path} is not valid JSON ({e})") from None
    return parse(kind, data, str(path))


def read_adapter(folder: Path) -> AdapterManifest:
    return read(folder, AdapterManifest)


def read_dataset(folder: Path) -> DatasetManifest:
    path = folder / FILE
    if not path.is_file():
        raise ManifestError(f"{path} does not exist: {folder} is not a dataset")
    return read(folder, DatasetManifest)


def write(folder: Path, manifest: Manifest) -> Path:
    """Write `manifest` into `folder` atomically (a killed write leaves the old file whole)."""
    path = folder / FILE
    tmp = folder / f".{FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest.dump(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
