"""`repotune tuner status` without a tuner: the next run read in the configured time zone, the
requests waiting, nothing running; the cycle lock refuses a second holder at once."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import tomli_w

from repotune import cycles
from repotune import db as store


def test_status_shows_the_next_run_in_its_time_zone_and_the_requests_waiting(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps({"paths": {"data_dir": str(tmp_path / "state")},
                                     "tuner": {"lineage": "proj"},
                                     "schedule": {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}}))

    def status() -> dict:
        done = subprocess.run([sys.executable, "-m", "repotune.cli", "tuner", "status", "--json", "--config",
                               str(config)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    shown = status()
    upcoming = datetime.fromisoformat(shown["next_run"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (upcoming.hour, upcoming.minute) == (2, 30) and upcoming > datetime.now(ZoneInfo("Europe/Berlin"))
    assert not shown["running"] and not shown["cycle_running"] and shown["runs"] == [] and shown["pending"] == []
    db = store.open_db(store.db_path(tmp_path / "state"))
    cycles.request(db, "github:push", {"ref": "refs/heads/main", "sha": "a" * 40})
    assert [r["detail"]["sha"] for r in status()["pending"]] == ["a" * 40]
    text = subprocess.run([sys.executable, "-m", "repotune.cli", "tuner", "status", "--config", str(config)],
                          capture_output=True, text=True).stdout
    assert "not running" in text and "no cycle has run yet" in text and "requests waiting: 1" in text


def test_the_cycle_lock_refuses_a_second_holder_at_once(tmp_path):
    with cycles.held(tmp_path, cycles.CYCLE_LOCK, "busy"):
        assert cycles.is_held(tmp_path, cycles.CYCLE_LOCK)
        holder = subprocess.run([sys.executable, "-c", "from pathlib import Path; from repotune import cycles\n"
                                 f"with cycles.held(Path({str(tmp_path)!r}), cycles.CYCLE_LOCK, 'taken'): pass"],
                                capture_output=True, text=True, timeout=60)
        assert holder.returncode == 1 and "Busy: taken" in holder.stderr
    assert not cycles.is_held(tmp_path, cycles.CYCLE_LOCK)
    with pytest.raises(ValueError, match="cannot go from"):
        db = store.open_db(tmp_path / "s.db")
        run = cycles.start(db, "proj", "now")
        cycles.finish(db, run, "promoted")
        cycles.finish(db, run, "failed")  # a finished run's status is final


def test_tune_without_now_says_what_to_run(tmp_path):
    done = subprocess.run([sys.executable, "-m", "repotune.cli", "tune", "--config", str(tmp_path / "none.toml")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "--now" in done.stderr and "repotune tuner" in done.stderr
