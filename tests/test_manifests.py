"""Manifests: typed, read and written in one place, unknown fields kept, bad files named."""

from __future__ import annotations

import json

import pytest

from repotune import manifests
from repotune.manifests import AdapterManifest, DatasetManifest, GateDecision, ManifestError


def test_an_adapter_manifest_round_trips_and_keeps_what_it_does_not_know(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({
        "base_model": "builtin:tiny", "base_fingerprint": "ab" * 8, "ingest_cursor": 41, "dataset": "d" * 16,
        "scores": {"general": 0.5, "domain": 0.75}, "gate": {"decision": "promote", "reasons": ["ok"]},
        "trained_with": {"lr": 0.0002},  # written by a newer version: kept as it was
    }))
    manifest = manifests.read_adapter(tmp_path)
    assert manifest.ingest_cursor == 41 and manifest.scores["domain"] == 0.75
    assert manifest.gate == GateDecision(decision="promote", reasons=["ok"])
    manifest.version = 3
    manifests.write(tmp_path, manifest)
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert again["trained_with"] == {"lr": 0.0002} and again["version"] == 3 and again["dataset"] == "d" * 16
    assert not list(tmp_path.glob(".manifest.json.*"))  # written through a temporary file, renamed


def test_a_folder_without_a_manifest_reads_as_an_empty_adapter_manifest(tmp_path):
    assert manifests.read_adapter(tmp_path) == AdapterManifest()
    with pytest.raises(ManifestError, match="is not a dataset"):
        manifests.read_dataset(tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is not a JSON object"),
    ('{"ingest_cursor": "yesterday"}', "ingest_cursor: Input should be a valid integer"),
    ('{"gate": {"decision": "maybe"}}', "gate.decision: Input should be 'promote' or 'reject'"),
    ('{"scores": {"general": "high"}}', "scores.general: Input should be a valid number"),
])
def test_a_malformed_adapter_manifest_is_refused_naming_the_file_and_field(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError) as e:
        manifests.read_adapter(tmp_path)
    assert str(tmp_path / "manifest.json") in str(e.value) and message in str(e.value)


def test_a_dataset_manifest_needs_its_hash_and_lineage(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"lineage": "proj", "counts": {"train": 3}}))
    with pytest.raises(ManifestError, match="hash: Field required"):
        manifests.read_dataset(tmp_path)
    manifests.write(tmp_path, DatasetManifest(hash="h" * 16, lineage="proj", counts={"train": 3}))
    assert manifests.read_dataset(tmp_path).counts == {"train": 3}
