"""`repotune gc`: old adapter versions are retired and their folders removed, never the promoted one,
the newest superseded or a candidate; old datasets are removed, never the latest; a dry run
removes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from repotune import config as cfg
from repotune import datasets, registry
from repotune import db as store
from tests import training
from tests.test_registry import make_adapter


def test_gc_keeps_what_serving_and_rollback_need_and_removes_the_rest(tmp_path, micro):
    from ingest.run import ingest
    from repotune import models, retention
    from tuner.data.build import build

    base = models.resolve(str(micro))
    repo = training.small_repo(tmp_path / "project")
    raw = {"paths": {"data_dir": str(tmp_path / "state")}, "ingest": {"repo": str(repo.path), "workers": 1},
           "tuner": {"lineage": "proj", "data": {"generators": ["templates"], "paraphrases": 1}},
           "retention": {"keep_versions": 2, "keep_datasets": 2}}
    settings = cfg.Settings(config=cfg.parse(raw), source=None, root=tmp_path, secrets=cfg.Secrets())
    built = []
    for i in range(4):  # four nights, each with a new commit: four datasets
        repo.commit(f"Night {i}: count the lines of each file", {f"night{i}.py": f"N = {i}\n"})
        ingest(settings)
        built.append(build(settings).path)
    db = store.open_db(store.db_path(settings.data_dir))
    adapter = make_adapter(base, tmp_path / "adapter")
    for _ in range(8):
        registry.register(db, settings.data_dir, "proj", adapter, base, max_lora_rank=16, actor="test")
    for version in (1, 4, 6):  # 1 and 4 end superseded, 6 promoted
        registry.promote(db, "proj", version, "test", "night")
    for version in (2, 3, 5, 7):
        registry.transition(db, "proj", version, "rejected", "gate", "worse")
    # v8 stays a candidate (a gate may be judging it)

    dry = retention.collect(settings, dry_run=True)
    assert sorted(r.name for r in dry.removed if r.kind == "version") == [f"proj v{v}" for v in (1, 2, 3, 5)]
    assert sorted(r.path for r in dry.removed if r.kind == "dataset") == sorted(str(p) for p in built[:2])
    assert all(registry.get(db, "proj", v).path.is_dir() for v in range(1, 9)) and all(p.is_dir() for p in built)

    cli = subprocess.run([sys.executable, "-m", "repotune.cli", "gc", "--json", "--config",
                          str(training.write_config(tmp_path, repo.path))], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    done = json.loads(cli.stdout)  # the file's defaults: 5 versions and 3 datasets kept
    assert sorted(r["name"] for r in done["removed"]) == ["proj v1", "proj v2", "proj v3", f"proj/{built[0].name}"]
    assert done["freed_bytes"] > 0 and not registry.get(db, "proj", 1).path.exists()

    result = retention.collect(settings.model_copy(update={"config": cfg.parse(
        {**raw, "retention": {"keep_versions": 1, "keep_datasets": 1}})}))
    assert sorted(r.name for r in result.removed) == sorted(
        ["proj v5", "proj v7", f"proj/{built[1].name}", f"proj/{built[2].name}"])
    for version, status in {1: "retired", 2: "retired", 3: "retired", 4: "superseded", 5: "retired", 6: "promoted",
                            7: "retired", 8: "candidate"}.items():
        adapter_row = registry.get(db, "proj", version)
        assert adapter_row.status == status, version
        assert adapter_row.path.is_dir() == (status != "retired"), version
    assert registry.rollback_target(db, "proj").version == 4  # a rollback still has somewhere to go
    assert any(e["actor"] == "gc" and "retention" in e["reason"] for e in registry.events(db, "proj"))
    assert [p.is_dir() for p in built] == [False, False, False, True]
    assert datasets.find(settings.data_dir, "proj") == built[3]


def test_gc_is_refused_while_a_cycle_runs(tmp_path):
    from repotune import cycles

    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "state"}"\n[tuner]\nlineage = "proj"\n')
    with cycles.held(tmp_path / "state", cycles.CYCLE_LOCK, "a cycle"):
        done = subprocess.run([sys.executable, "-m", "repotune.cli", "gc", "--config", str(config)],
                              capture_output=True, text=True)
    assert done.returncode == 4 and "a cycle is running" in done.stderr
    done = subprocess.run([sys.executable, "-m", "repotune.cli", "gc", "--dry-run", "--config", str(config)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "would remove 0" in done.stdout
