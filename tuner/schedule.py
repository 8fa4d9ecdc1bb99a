"""`repotune tuner`: the daemon that runs a cycle on a schedule and when the webhook asks.

APScheduler 3 runs two jobs on two worker threads: the cron job (`schedule.cron` read
in `schedule.timezone`; a run missed while the machine slept still starts within
`schedule.misfire_grace_s`, and missed runs coalesce into one), and a poll of the store
every `schedule.poll_s` for requests the server's webhook wrote
(`repotune.cycles.request`), which starts a cycle once none has come for
`schedule.debounce_s` (a burst of merges makes one cycle). One cycle at a time: the
poll goes on while a cycle runs and leaves its requests for the next one, and a scheduled
run that comes while any cycle runs (this daemon's or a `tune --now`) is not started,
and says so: that cycle is already learning what is new.

The daemon holds `data_dir/tuner.lock` while it runs: a second daemon on the same store is
refused, and the webhook can tell whether anyone will take its request. Each cycle runs in
a child process of its own: a long-lived daemon keeps none of a training's memory, and
stopping the daemon (SIGINT, SIGTERM) stops a cycle cleanly — the child is asked to stop,
records its cycle `failed` ("stopped"), stops a temporary eval server it started, and is
killed only if it has not ended within `STOP_GRACE_S`. A failed cycle is logged and
recorded; the daemon goes on to the next.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from repotune import cycles, registry
from repotune import db as store
from repotune.config import Settings

log = logging.getLogger("repotune.tuner")
Say = Callable[[str], None]
STOP_GRACE_S = 60.0


@dataclass
class Status:
    lineage: str
    running: bool  # a daemon holds the tuner lock
    cycle_running: bool  # a cycle holds the cycle lock (the daemon's or a tune --now)
    cron: str
    timezone: str
    next_run: str | None
    pending: list[dict[str, Any]]
    promoted: int | None
    failures_in_a_row: int
    runs: list[cycles.Run] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "runs"}, "runs": [r.as_dict() for r in self.runs]}


def trigger(settings: Settings) -> Any:
    from apscheduler.triggers.cron import CronTrigger

    sched = settings.config.schedule
    return CronTrigger.from_crontab(sched.cron, timezone=sched.timezone)


def status(settings: Settings, limit: int = 10) -> Status:
    sched = settings.config.schedule
    now = datetime.now(UTC)
    upcoming = trigger(settings).get_next_fire_time(None, now)
    with closing(store.open_db(store.db_path(settings.data_dir))) as db:
        promoted = registry.promoted(db, settings.lineage)
        return Status(
            lineage=settings.lineage, running=cycles.is_held(settings.data_dir, cycles.TUNER_LOCK),
            cycle_running=cycles.is_held(settings.data_dir, cycles.CYCLE_LOCK), cron=sched.cron,
            timezone=sched.timezone, next_run=upcoming.isoformat() if upcoming else None,
            pending=cycles.pending(db), promoted=promoted.version if promoted else None,
            failures_in_a_row=cycles.failures_in_a_row(db, settings.lineage),
            runs=cycles.runs(db, settings.lineage, limit),
        )


def run_daemon(settings: Settings, say: Say, first_if_unpromoted: bool = False,
               stop: threading.Event | None = None) -> None:
    """Run until SIGINT or SIGTERM (or `stop` is set); raises cycles.Busy when a daemon already runs."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    sched = settings.config.schedule
    stop = stop or threading.Event()
    with cycles.held(settings.data_dir, cycles.TUNER_LOCK,
                     f"a tuner already runs on {settings.data_dir} (`repotune tuner status`)"):
        worker = _Worker(settings, say)
        # Background rather than Blocking: the main thread waits on `stop`, which a signal
        # handler (main thread only) or a test can set.
        scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(2)}, timezone=sched.timezone,
                                        job_defaults={"coalesce": True, "max_instances": 1,
                                                      "misfire_grace_time": sched.misfire_grace_s})
        scheduler.add_job(worker.cycle, trigger(settings), args=["schedule"], id="nightly")
        scheduler.add_job(worker.poll, "interval", seconds=sched.poll_s, id="requests")
        if first_if_unpromoted and worker.unpromoted():
            say(f"{settings.lineage} has no promoted adapter yet: a first cycle starts now (base answers meanwhile)")
            scheduler.add_job(worker.cycle, args=["first"], id="first")
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        scheduler.start()
        nightly = scheduler.get_job("nightly")
        say(f"tuner running for {settings.lineage}: next cycle {nightly.next_run_time:%Y-%m-%d %H:%M %Z} "
            f"({sched.cron}, {sched.timezone}); webhook requests are taken every {sched.poll_s:g} s after "
            f"{sched.debounce_s:g} s of quiet")
        stop.wait()
        say("tuner stopping")
        scheduler.shutdown(wait=False)
        worker.stop()


class _Worker:
    def __init__(self, settings: Settings, say: Say):
        self.settings, self.say = settings, say
        self.child: Any = None
        self.stopping = False
        self.running = threading.Lock()  # one cycle of this daemon at a time

    def stop(self) -> None:
        """Ask a running cycle to stop; kill it after STOP_GRACE_S."""
        self.stopping = True
        child = self.child
        if child is None or not child.is_alive():
            return
        child.terminate()  # SIGTERM: the child records its cycle as stopped
        child.join(STOP_GRACE_S)
        if child.is_alive():
            child.kill()  # the next cycle marks its row `killed`
            child.join(10)

    def unpromoted(self) -> bool:
        with closing(store.open_db(store.db_path(self.settings.data_dir))) as db:
            return registry.promoted(db, self.settings.lineage) is None

    def poll(self) -> None:
        if self.running.locked() or cycles.is_held(self.settings.data_dir, cycles.CYCLE_LOCK):
            return  # the requests wait for the next cycle
        with closing(store.open_db(store.db_path(self.settings.data_dir))) as db:
            waiting = cycles.pending(db)
        if not waiting:
            return
        newest = max(datetime.fromisoformat(r["received_at"]) for r in waiting)
        if (datetime.now(UTC) - newest).total_seconds() >= self.settings.config.schedule.debounce_s:
            self.cycle("webhook")

    def cycle(self, trigger: str) -> None:
        import multiprocessing

        if self.stopping:
            return
        if cycles.is_held(self.settings.data_dir, cycles.CYCLE_LOCK) or not self.running.acquire(blocking=False):
            self.say(f"cycle ({trigger}) not started: a cycle is running (`repotune tuner status`)")
            return
        try:
            # spawn: a fresh interpreter, not a fork of one that runs the scheduler's threads
            self.child = multiprocessing.get_context("spawn").Process(target=_cycle_in_child,
                                                                      args=(self.settings, trigger), daemon=False)
            self.child.start()
            self.child.join()
            if self.child.exitcode not in (0, None) and not self.stopping:
                self.say(f"cycle ({trigger}) process ended with exit code {self.child.exitcode}")
        finally:
            self.running.release()


def _cycle_in_child(settings: Settings, trigger: str) -> None:
    """One cycle in the child process; its lines go to the daemon's stderr."""
    import sys

    from tuner.cycle import CycleError, cycle, step_line

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def stopped(*_: object) -> None:
        raise SystemExit("stopped: the tuner was asked to stop")  # unwinds: recorded, servers stopped

    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the daemon, which stops this child

    def on_step(name: str, state: str, step: cycles.Step | None) -> None:
        say("  " + step_line(name, state, step))

    say(f"cycle ({trigger}) starting")
    try:
        outcome = cycle(settings, trigger, on_step=on_step)
    except cycles.Busy as e:
        say(f"cycle ({trigger}) not started: {e}")
    except CycleError as e:
        say(f"cycle ({trigger}) failed: {e}")
    except Exception:  # the daemon outlives a bug in one cycle; the row says `failed`
        log.exception("cycle (%s) failed", trigger)
        say(f"cycle ({trigger}) failed with an unexpected error (logged)")
    else:
        say(outcome.line() + "".join(f"\n  {n}" for n in outcome.notes))
