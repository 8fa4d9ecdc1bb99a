"""The adapter registry: versions, immutable folders, validated transitions, one promoted."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from repotune import db as store
from repotune import models, registry


@pytest.fixture(scope="module")
def base(micro) -> models.Base:
    return models.resolve(str(micro))


def make_adapter(base: models.Base, folder: Path, rank: int = 8, record: bool = True, **extra) -> Path:
    model = AutoModelForCausalLM.from_pretrained(base.path)
    config = LoraConfig(r=rank, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **extra)
    get_peft_model(model, config).save_pretrained(folder)
    if record:
        models.record_base(folder, base)
    return folder


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory) -> Path:
    return make_adapter(base, tmp_path_factory.mktemp("adapter") / "a")


@pytest.fixture
def db(tmp_path):
    return store.open_db(tmp_path / "repotune.db")


def register(db, tmp_path, base, adapter, lineage="proj"):
    return registry.register(db, tmp_path / "data", lineage, adapter, base, max_lora_rank=16, actor="test")


def test_register_copies_into_an_immutable_versioned_folder(db, tmp_path, base, adapter):
    v1 = register(db, tmp_path, base, adapter)
    v2 = register(db, tmp_path, base, adapter)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.path == tmp_path / "data" / "adapters" / "proj" / "v1" and v1.path.is_dir()
    assert v1.status == "candidate" and v1.engine_name == "proj-v1"
    manifest = json.loads((v2.path / "manifest.json").read_text())
    assert manifest["base_fingerprint"] == base.fingerprint and manifest["version"] == 2
    assert manifest["lineage"] == "proj" and manifest["lora_rank"] == 8
    assert (v2.path / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert not list((tmp_path / "data" / "adapters" / "proj").glob(".tmp-*"))
    assert [e["action"] for e in registry.events(db, "proj")] == ["register", "register"]
    # Lineages number their versions independently.
    assert register(db, tmp_path, base, adapter, lineage="other").version == 1


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda b, f: f.mkdir(), "not a PEFT adapter folder"),
        (lambda b, f: make_adapter(b, f, rank=32), r"LoRA rank 32, above serve.max_lora_rank \(16\)"),
        (lambda b, f: make_adapter(b, f, modules_to_save=["lm_head"]), "modules_to_save"),
        (lambda b, f: (make_adapter(b, f), (f / "adapter_model.safetensors").unlink()), "no adapter weights"),
        (lambda b, f: make_adapter(b, f, record=False), "--assume-base"),
    ],
)
def test_register_refuses_what_the_engine_could_not_serve(db, tmp_path, base, setup, message):
    folder = tmp_path / "bad"
    setup(base, folder)
    with pytest.raises(models.ModelError if "assume" in message else registry.RegistryError, match=message):
        register(db, tmp_path, base, folder)
    assert registry.versions(db, "proj") == []
    assert not (tmp_path / "data" / "adapters" / "proj" / "v1").exists()


def test_an_adapter_for_another_base_is_refused_and_assume_base_is_explicit(db, tmp_path, base):
    folder = make_adapter(base, tmp_path / "foreign")
    other = models.Base(spec="builtin:tiny", path=base.path, fingerprint="0123456789abcdef")
    with pytest.raises(models.IncompatibleBase, match="0123456789abcdef"):
        registry.register(db, tmp_path / "d", "proj", folder, other, 16, "test")
    unrecorded = make_adapter(base, tmp_path / "plain", record=False)
    v1 = registry.register(db, tmp_path / "d", "proj", unrecorded, base, 16, "test", assume_base=True)
    assert v1.base_fingerprint == base.fingerprint


def test_promote_supersedes_and_rollback_returns(db, tmp_path, base, adapter):
    for _ in range(3):
        register(db, tmp_path, base, adapter)
    registry.promote(db, "proj", 1, "alice", "first")
    registry.promote(db, "proj", 2, "alice", "better")
    assert [(a.version, a.status) for a in registry.versions(db, "proj")] == [
        (1, "superseded"), (2, "promoted"), (3, "candidate")
    ]
    registry.promote(db, "proj", 3, "bob", "newest")
    back = registry.rollback(db, "proj", "carol", "v3 answers badly")
    assert back.version == 2 and registry.promoted(db, "proj").version == 2  # newest superseded
    registry.rollback(db, "proj", "carol", "further", to=1)
    assert registry.promoted(db, "proj").version == 1
    latest = registry.events(db, "proj")[0]
    assert (latest["actor"], latest["reason"], latest["to_status"]) == ("carol", "further", "promoted")


def test_invalid_transitions_are_refused(db, tmp_path, base, adapter):
    register(db, tmp_path, base, adapter)
    register(db, tmp_path, base, adapter)
    registry.promote(db, "proj", 1, "a", "r")
    with pytest.raises(registry.RegistryError, match="already promoted"):
        registry.promote(db, "proj", 1, "a", "r")
    with pytest.raises(registry.RegistryError, match="is promoted; promote another version or roll back"):
        registry.transition(db, "proj", 1, "retired", "a", "r")
    registry.transition(db, "proj", 2, "retired", "a", "old")
    with pytest.raises(registry.RegistryError, match="is retired and cannot become promoted"):
        registry.promote(db, "proj", 2, "a", "r")
    with pytest.raises(registry.RegistryError, match="no version v9"):
        registry.promote(db, "proj", 9, "a", "r")
    with pytest.raises(registry.RegistryError, match="no superseded version"):
        registry.rollback(db, "proj", "a", "r")


def test_the_database_itself_forbids_two_promoted_versions(db, tmp_path, base, adapter):
    register(db, tmp_path, base, adapter)
    register(db, tmp_path, base, adapter)
    registry.promote(db, "proj", 1, "a", "r")
    with pytest.raises(Exception, match="UNIQUE"):
        db.execute("update adapters set status = 'promoted' where version = 2")


def test_concurrent_promotions_leave_exactly_one_promoted(tmp_path, base, adapter):
    path = tmp_path / "repotune.db"
    db = store.open_db(path)
    for _ in range(4):
        register(db, tmp_path, base, adapter)
    errors: list[Exception] = []

    def admin(versions: list[int]) -> None:
        conn = store.open_db(path)  # each admin has its own connection, as separate processes would
        for v in versions * 10:
            try:
                registry.promote(conn, "proj", v, "admin", "race")
            except registry.RegistryError:
                pass  # already promoted by the other admin: a refusal, not a corruption
            except Exception as e:
                errors.append(e)

    threads = [threading.Thread(target=admin, args=([1, 2],)), threading.Thread(target=admin, args=([3, 4],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    statuses = [a.status for a in registry.versions(db, "proj")]
    assert statuses.count("promoted") == 1 and set(statuses) == {"promoted", "superseded"}


@pytest.mark.parametrize(("text", "version"), [("7", 7), ("v7", 7), (" v12 ", 12), (3, 3)])
def test_versions_are_accepted_as_7_or_v7(text, version):
    assert registry.parse_version(text) == version


@pytest.mark.parametrize("text", ["seven", "v", "7.1", "-1"])
def test_bad_versions_are_refused(text):
    with pytest.raises(registry.RegistryError, match="is not a version"):
        registry.parse_version(text)


def test_an_adapter_with_a_malformed_manifest_is_refused_and_nothing_is_copied(db, tmp_path, base, adapter):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in adapter.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "manifest.json").write_text(json.dumps({"base_fingerprint": base.fingerprint,
                                                      "ingest_cursor": "last night"}))
    with pytest.raises(registry.RegistryError) as e:
        register(db, tmp_path, base, broken)
    assert str(broken / "manifest.json") in str(e.value) and "ingest_cursor" in str(e.value)
    assert registry.versions(db, "proj") == [] and not (tmp_path / "data" / "adapters" / "proj").exists()


def test_a_folder_in_the_way_is_kept_unless_it_is_registers_own_orphan(db, tmp_path, base, adapter):
    """A kill between register's rename and its commit leaves v<N> with no row: the next register takes its place.
    Any other folder in the way is someone else's and stays, named in the error."""
    lineage_dir = tmp_path / "data" / "adapters" / "proj"
    shutil.copytree(adapter, lineage_dir / "v1")
    with pytest.raises(registry.RegistryError, match="v1 exists but is not in the registry; move it away first"):
        register(db, tmp_path, base, adapter)
    assert (lineage_dir / "v1").is_dir()
    manifest = json.loads((lineage_dir / "v1" / "manifest.json").read_text())
    manifest.update(lineage="proj", version=1)  # what register writes just before its rename
    (lineage_dir / "v1" / "manifest.json").write_text(json.dumps(manifest))
    (lineage_dir / ".tmp-999999999-x").mkdir()  # a copy of a registration whose process is gone
    assert register(db, tmp_path, base, adapter).version == 1
    assert sorted(p.name for p in lineage_dir.iterdir()) == ["v1"]
