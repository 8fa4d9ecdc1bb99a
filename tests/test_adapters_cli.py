"""`repotune adapters …` with the server down: the CLI records each change in the registry."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from repotune import db as store
from repotune import models, registry
from repotune.cli import app
from serve.engine import free_port

from .test_registry import make_adapter

runner = CliRunner()


@pytest.fixture
def project(tmp_path, micro, clean_env):
    """A project with no server: serve.port is a free port nobody listens on, so promote and
    rollback take the registry path whatever runs on this machine (8000, the default, may be taken)."""
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nbase = "{micro}"\n[serve]\nport = {free_port()}\n[tuner]\nlineage = "proj"\n'
                      f'[paths]\ndata_dir = "state"\n')
    return config


def cli(project, *args: str):
    return runner.invoke(app, ["adapters", *args, "--config", str(project)])


def cli_json(project, *args: str):
    result = cli(project, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_register_list_promote_rollback_retire(project, tmp_path, micro):
    base = models.resolve(str(micro))
    adapter = make_adapter(base, tmp_path / "adapter")
    for expected in (1, 2, 3):
        assert cli_json(project, "register", str(adapter), "--reason", "trained")["version"] == expected

    assert cli_json(project, "promote", "v1", "--reason", "first")["status"] == "promoted"
    assert cli_json(project, "promote", "2", "--reason", "better")["status"] == "promoted"
    assert cli_json(project, "rollback", "--reason", "v2 regressed")["version"] == 1
    assert cli_json(project, "retire", "v3", "--reason", "never needed")["status"] == "retired"

    listed = cli_json(project, "list")
    assert [(a["version"], a["status"]) for a in listed] == [(1, "promoted"), (2, "superseded"), (3, "retired")]
    assert listed[0]["engine_name"] == "proj-v1" and listed[0]["promoted_at"]
    table = cli(project, "list")
    assert table.exit_code == 0 and "v1" in table.stdout and "promoted" in table.stdout

    db = store.open_db(tmp_path / "state" / "repotune.db")
    reasons = [e["reason"] for e in registry.events(db, "proj")]
    assert "v2 regressed" in reasons and all(e["actor"].startswith("cli:") for e in registry.events(db, "proj"))


def test_errors_are_one_clear_line_and_exit_1(project, tmp_path, micro):
    base = models.resolve(str(micro))
    cli_json(project, "register", str(make_adapter(base, tmp_path / "a")))
    cases = [
        (("promote", "v7", "--reason", "x"), "proj has no version v7"),
        (("promote", "seven", "--reason", "x"), "'seven' is not a version"),
        (("rollback",), "no superseded version"),
        (("register", str(tmp_path)), "not a PEFT adapter folder"),
    ]
    for args, message in cases:
        result = cli(project, *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output


def test_a_version_for_another_base_cannot_be_promoted(project, tmp_path, micro):
    base = models.resolve(str(micro))
    cli_json(project, "register", str(make_adapter(base, tmp_path / "a")))
    db = store.open_db(tmp_path / "state" / "repotune.db")
    db.execute("update adapters set base_fingerprint = 'feedfacefeedface' where version = 1")
    db.conn.commit()
    result = cli(project, "promote", "1", "--reason", "x")
    assert result.exit_code == 1 and "feedfacefeedface" in result.stderr and "cannot be served" in result.stderr
    assert registry.promoted(db, "proj") is None
