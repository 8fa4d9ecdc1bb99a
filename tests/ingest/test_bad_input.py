"""Bad input: each gets a clear message, stores nothing half-done, and spares the rest."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess

import pytest

from ingest.run import IngestError, ingest
from repotune import db as store_db
from tests.ingest.conftest import GitRepo


def _db(settings):
    return store_db.open_db(store_db.db_path(settings.data_dir))


def test_a_folder_that_is_not_a_repository_is_named(tmp_path, settings_for) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(IngestError, match="plain is not a git repository"):
        ingest(settings_for(tmp_path / "plain"))
    with pytest.raises(IngestError, match="no such folder"):
        ingest(settings_for(tmp_path / "nowhere"))


def test_the_command_names_a_folder_that_is_not_a_repository_and_leaves_no_worker_running(tmp_path) -> None:
    from typer.testing import CliRunner

    from repotune.cli import app

    (tmp_path / "plain").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "state"}"\n[ingest]\nrepo = "{tmp_path / "plain"}"\n'
                      "workers = 2\n")
    result = CliRunner().invoke(app, ["ingest", "--config", str(config)])
    assert result.exit_code == 1 and "plain is not a git repository" in result.output
    assert multiprocessing.active_children() == []  # the workers started for the run were stopped


def test_the_command_names_a_base_model_it_cannot_find_source_by_source(tmp_path) -> None:
    from typer.testing import CliRunner

    from repotune.cli import app

    repo = GitRepo(tmp_path / "proj")
    repo.commit("One", {"a.py": "x = 1\n"})
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "state"}"\n[model]\nbase = "builtin:nope"\n'
                      f'[ingest]\nrepo = "{repo.path}"\nworkers = 2\n')
    result = CliRunner().invoke(app, ["ingest", "--config", str(config), "--json"])
    assert result.exit_code == 1
    assert "unknown built-in model 'builtin:nope'" in result.output
    assert multiprocessing.active_children() == []


def test_an_unreachable_remote_is_named_without_its_credentials(tmp_path, settings_for) -> None:
    url = "http://user:hunter2@127.0.0.1:9/team/project.git"  # nothing listens on port 9
    with pytest.raises(IngestError, match=r"cannot clone http://127\.0\.0\.1:9/team/project\.git") as e:
        ingest(settings_for(url))
    assert "hunter2" not in str(e.value)
    assert not list((tmp_path / "state" / "repos").glob("*.git"))  # no half-made mirror


def test_a_clone_url_is_mirrored_and_fetched_on_each_run(tmp_path, settings_for) -> None:
    origin = GitRepo(tmp_path / "origin")
    origin.commit("One", {"a.py": "x = 1\n"})
    settings = settings_for(f"file://{origin.path}")
    assert ingest(settings).reports["git"].items == 1
    origin.commit("Two", {"a.py": "x = 2\n"})
    assert ingest(settings).reports["git"].items == 1
    assert len(list((tmp_path / "state" / "repos").glob("*.git"))) == 1


def test_non_utf8_binary_and_oversized_files_are_skipped_and_counted(tmp_path, settings_for) -> None:
    repo = GitRepo(tmp_path / "odd")
    repo.commit(
        "Odd files",
        {
            "latin1.txt": "caf\xe9 cr\xe8me\n".encode("latin-1"),
            "image.bin": b"\x89PNG\0\0\0" * 100,
            "big.txt": ("0123456789" * 100 + "\n") * 1100,  # 1.1 MB, over the 1 MB cap set below
            "ok.py": "print('fine')\n",
        },
    )
    result = ingest(settings_for(repo.path, max_file_bytes=1_000_000, workers=1))
    snap = result.reports["snapshot"]
    assert snap.items == 1
    assert snap.skipped == {"not UTF-8 text": 1, "binary": 1, "larger than ingest.max_file_bytes": 1}
    commit = next(_db(settings_for(repo.path)).query("select * from commits"))
    assert len(commit["diff"]) < 70_000 and commit["diff_truncated"] == 1  # the 1.1 MB diff was cut


@pytest.mark.slow
def test_a_200_mb_file_and_a_20000_file_commit_are_cut_not_stored_whole(tmp_path, settings_for) -> None:
    repo = GitRepo(tmp_path / "huge")
    line = "z" * 999 + "\n"
    with (repo.path / "dump.sql").open("w") as f:
        for _ in range(200_000):  # 200 MB of text
            f.write(line)
    repo.commit("Add a 200 MB dump")
    (repo.path / "dump.sql").unlink()
    for i in range(20_000):
        (repo.path / f"gen/f{i:05d}.txt").parent.mkdir(exist_ok=True)
        (repo.path / f"gen/f{i:05d}.txt").write_text(f"{i}\n")
    repo.commit("Generate 20,000 files")
    settings = settings_for(repo.path, workers=1)
    result = ingest(settings)
    assert result.status == "ok", result.errors
    db = _db(settings)
    rows = {r["message"]: r for r in db.query("select message, diff, diff_truncated, files_changed from commits")}
    dump, gen = rows["Add a 200 MB dump"], rows["Generate 20,000 files"]
    assert dump["diff_truncated"] == 1 and len(dump["diff"]) <= 64_000 + 200
    assert gen["files_changed"] == 20_001 and gen["diff_truncated"] == 1  # and dump.sql deleted
    assert db.execute("select count(*) from commit_files").fetchone()[0] == 20_002
    assert "more files' diffs cut" in gen["diff"]


def _drop_blob(repo: GitRepo, path: str, rev: str = "HEAD") -> str:
    """Delete one file's blob from the object store, as a copy without large blobs would lack it."""
    blob = repo.git("rev-parse", f"{rev}:{path}")
    repo.git("repack", "-a", "-d", "-q")  # objects into a pack, then unpack all but one loosely
    packs = list((repo.path / ".git/objects/pack").glob("*.pack"))
    for pack in packs:
        moved = pack.with_suffix(".moved")
        pack.rename(moved)
        pack.with_suffix(".idx").unlink()
        subprocess.run(["git", "-C", str(repo.path), "unpack-objects", "-q"], stdin=moved.open("rb"), check=True)
        moved.unlink()
    (repo.path / ".git/objects" / blob[:2] / blob[2:]).unlink()
    return blob


def test_missing_objects_skip_their_files_and_the_run_completes(tmp_path, settings_for) -> None:
    repo = GitRepo(tmp_path / "partial")
    repo.commit("Code", {"a.py": "def a():\n    return 1\n", "model.bin.txt": "weights " * 1000})
    repo.commit("More code", {"b.py": "def b():\n    return 2\n"})
    repo.git("checkout", "-q", "-b", "topic")
    repo.commit("Topic", {"c.py": "def c():\n    return 3\n"})
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--no-ff", "topic", "-m", "Merge topic")
    _drop_blob(repo, "model.bin.txt")
    settings = settings_for(repo.path, workers=1)
    result = ingest(settings)
    assert result.status == "ok", result.errors
    assert result.reports["git"].skipped["missing object"] == 1
    assert result.reports["snapshot"].skipped["missing object"] == 1
    db = _db(settings)
    assert db.execute("select count(*) from commits").fetchone()[0] == 4
    # Read without the missing blob, a merge still lists what its branch changed, with line counts.
    merged = list(db.query("select f.path, f.insertions, f.deletions from commit_files f join commits c "
                           "on c.sha = f.sha where c.message = 'Merge topic'"))
    assert merged == [{"path": "c.py", "insertions": 2, "deletions": 0}]
    skipped = next(db.query("select * from commit_files where path = 'model.bin.txt'"))
    assert skipped["skipped"] == "missing object"
    code = next(db.query("select diff from commits where message = 'Code'"))["diff"]
    assert "def a():" in code and "weights" not in code
    assert {r["path"] for r in db.query("select path from documents")} == {"a.py", "b.py", "c.py"}


def test_a_failing_source_leaves_the_others_and_its_cursor_alone(tmp_path, settings_for) -> None:
    repo = GitRepo(tmp_path / "proj")
    repo.commit("One", {"a.py": "x = 1\n"})
    settings = settings_for(repo.path, workers=1)
    ingest(settings)
    db = _db(settings)
    cursor = db.execute("select value from cursors where source = 'git'").fetchone()[0]
    repo.commit("Two", {"a.py": "x = 2\n"})
    objects = repo.path / ".git/objects"
    shutil.copytree(objects, tmp_path / "objects-backup")
    for loose in objects.glob("??/*"):  # break every commit object: history cannot be read
        loose.write_bytes(b"garbage")
    result = ingest(settings, sources=["git"])
    assert result.status == "failed" and "git" in result.errors
    assert db.execute("select value from cursors where source = 'git'").fetchone()[0] == cursor
    assert db.execute("select count(*) from commits").fetchone()[0] == 1


def test_a_wrong_ingest_config_names_the_key(tmp_path) -> None:
    from repotune import config as cfg

    with pytest.raises(cfg.ConfigError, match=r"ingest\.github.*not \"owner/name\""):
        cfg.parse({"ingest": {"github": "https://github.com/acme/widgets"}})
    with pytest.raises(cfg.ConfigError, match=r"ingest\.chunk_tokens"):
        cfg.parse({"ingest": {"chunk_tokens": 4}})


def test_an_unknown_source_is_refused_before_anything_runs(tmp_path, settings_for) -> None:
    from typer.testing import CliRunner

    from repotune.cli import app

    repo = GitRepo(tmp_path / "proj")
    repo.commit("One", {"a.py": "x = 1\n"})
    settings = settings_for(repo.path)
    with pytest.raises(IngestError, match="unknown source nope; sources: git, github, snapshot, docs"):
        ingest(settings, sources=["nope"])
    assert not (tmp_path / "state" / "repotune.db").exists()
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "state"}"\n[ingest]\nrepo = "{repo.path}"\n')
    result = CliRunner().invoke(app, ["ingest", "--source", "nope", "--config", str(config)])
    assert result.exit_code == 1 and "unknown source nope" in result.output


def test_an_unreachable_wiki_fails_the_docs_source_alone(tmp_path, settings_for) -> None:
    repo = GitRepo(tmp_path / "proj")
    repo.commit("One", {"a.py": "x = 1\n", "README.md": "# Proj\n"})
    result = ingest(settings_for(repo.path, wiki="http://127.0.0.1:9/proj.wiki.git", workers=1))
    assert result.status == "partial"
    assert "cannot clone http://127.0.0.1:9/proj.wiki.git" in result.errors["docs"]
    assert result.reports["git"].items == 1 and result.reports["snapshot"].items == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tokenizer_the_workers_cannot_read_fails_each_source_clearly(tmp_path, workers: int) -> None:
    """The base model names a folder whose tokenizer.json is damaged: each source fails with
    that reason (a pool whose workers die setting up would restart them forever instead)."""
    from repotune import config as cfg

    repo = GitRepo(tmp_path / "project")
    repo.commit("Start", {"a.py": "x = 1\n", "README.md": "# A\n"})
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text('{"model": {"type": "BPE"')  # cut short
    raw = {"paths": {"data_dir": str(tmp_path / "state")}, "model": {"base": str(model)},
           "ingest": {"repo": str(repo.path), "workers": workers}}
    settings = cfg.Settings(config=cfg.parse(raw), source=None, root=tmp_path, secrets=cfg.Secrets())
    result = ingest(settings, sources=["git", "snapshot"])
    assert result.status == "failed" and set(result.errors) == {"git", "snapshot"}
    assert all("could not set up" in e for e in result.errors.values()), result.errors
    db = store_db.open_db(store_db.db_path(settings.data_dir))
    assert db.execute("select count(*) from cursors").fetchone()[0] == 0  # nothing half-done
