"""One cycle of the continual loop: ingest → data build → train → eval and gate → promote or reject.

Each step is the library function its own command calls (`ingest.run.ingest`,
`tuner.data.build.build`, `tuner.train.run.train`, `eval.judge.judge`); the cycle only
chains them, times them and records them in the store (`repotune.cycles`: one
`cycle_runs` row, its steps and figures). When the gate promotes, the kernel's promotion
call has the running server swap; nothing else here touches what is served, so a cycle
that fails at any step leaves the served adapter as it was, and the next one starts
clean (every step reads its inputs from the store or from disk, and a killed training
resumes from its checkpoint).

"Nothing new" is decided after the data build: when it finds nothing since the promoted
adapter's data, or when the dataset's hash and the training settings (`config_key`) are
those of the lineage's last cycle that trained and was judged — promoted or rejected,
since a rejected dataset would only be rejected again. A changed training config does
retrain; `force` trains anyway. Such a cycle is recorded as `nothing_new` and costs an
ingest and a build that reuse what was done before.

Cycles never overlap: one holds `data_dir/cycle.lock` for its length, and a second (a
`tune --now` beside the daemon) is refused at once with the running cycle's id, step and
process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Any

from repotune import cycles
from repotune import db as store
from repotune.config import Settings

Bars = Callable[[str, int, int | None, str], None]  # repotune.ui.progress_bars' update
OnStep = Callable[[str, str, cycles.Step | None], None]  # (step, "started" | its status, the step when ended)
STEPS = ("ingest", "data", "train", "eval")


class CycleError(Exception):
    """The cycle stopped at a step; the served adapter and the registry are as they were."""


@dataclass
class Outcome:
    run: cycles.Run
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.run.status

    def as_dict(self) -> dict[str, Any]:
        return {**self.run.as_dict(), "notes": self.notes}

    def line(self) -> str:
        """How the cycle ended, in one line for people."""
        r = self.run
        what = {"promoted": f"v{r.version} promoted: the server now serves it as {r.lineage}",
                "rejected": f"v{r.version} rejected by the gate: the served adapter is unchanged",
                "nothing_new": "nothing new to learn"}.get(r.status, r.status)
        return f"cycle {r.id} ({r.trigger}): {what} ({sum(s.seconds for s in r.steps):,.1f} s)"


def step_line(name: str, state: str, step: cycles.Step | None) -> str:
    """An `OnStep` event in words: "train: started", "train: done in 12.3 s"."""
    return f"{name}: {state}" + (f" in {step.seconds:,.1f} s" if step else "")


def cycle(settings: Settings, trigger: str = "now", force: bool = False, on_step: OnStep | None = None,
          bars: Bars | None = None) -> Outcome:
    """Run one cycle and return how it ended (promoted, rejected, nothing_new); raise cycles.Busy when
    another cycle runs, CycleError when a step failed (recorded as `failed`)."""
    with closing(store.open_db(store.db_path(settings.data_dir))) as db, \
            cycles.held(settings.data_dir, cycles.CYCLE_LOCK, lambda: _busy(db)):
        run_id = cycles.start(db, settings.lineage, trigger)
        cycles.take_requests(db, run_id)
        chain = _Chain(settings, db, run_id, on_step or (lambda *_: None), bars or (lambda *_: None))
        try:
            status = chain.run(force)
        except _StepFailed as e:
            cycles.finish(db, run_id, "failed", e.message)
            raise CycleError(f"cycle {run_id} stopped at {e.step}: {e.message}; the served adapter is unchanged") \
                from None
        except BaseException as e:  # Ctrl-C, or a bug: recorded, then raised as it is
            cycles.finish(db, run_id, "failed", f"{type(e).__name__}: {e}")
            raise
        cycles.finish(db, run_id, status)
        if status != "nothing_new":
            chain.collect()
        return Outcome(cycles.runs(db, settings.lineage, 1)[0], chain.notes)


class _StepFailed(Exception):
    def __init__(self, step: str, message: str):
        self.step, self.message = step, message


class _Chain:
    """The steps of one cycle, each timed and written to its row as it ends."""

    def __init__(self, settings: Settings, db: Any, run_id: int, on_step: OnStep, bars: Bars):
        self.settings, self.db, self.run_id, self.on_step, self.bars = settings, db, run_id, on_step, bars
        self.steps: list[cycles.Step] = []
        self.notes: list[str] = []

    def run(self, force: bool) -> str:
        from tuner.train.run import config_key

        self._step("ingest", self._ingest)
        built, nothing = self._step("data", self._build)
        key = config_key(self.settings)
        last = cycles.last_decided(self.db, self.settings.lineage)
        retrain = force or (last is not None and last.train_config != key)
        dataset: str | None = built.manifest.hash if built else last.dataset if last and retrain else None
        if dataset is None:
            self.notes.append(nothing or "no dataset was built")
            return "nothing_new"
        cycles.update(self.db, self.run_id, dataset=dataset, train_config=key)
        if nothing:
            why = "--force" if force else f"the training settings changed since cycle {last.id if last else '?'}"
            self.notes.append(f"{nothing}; {why}: training again on dataset {dataset}")
        elif last and (last.dataset, last.train_config) == (dataset, key) and not force:
            self.notes.append(f"dataset {dataset} and the training settings are those of cycle {last.id} "
                              f"({last.status}, v{last.version}): nothing to train (--force trains anyway)")
            return "nothing_new"
        trained = self._step("train", lambda: self._train(dataset))
        cycles.update(self.db, self.run_id, version=trained.adapter.version)
        if trained.adapter.status != "candidate":  # forced: the same run was trained and judged before
            self.notes.append(f"this dataset and these settings were trained before, as v{trained.adapter.version} "
                              f"({trained.adapter.status}): nothing new was trained")
            return "nothing_new"
        verdict = self._step("eval", lambda: self._judge(trained.adapter.version))
        return str(verdict.status)

    def collect(self) -> None:
        """The retention policy, after a cycle that wrote something; a failure is a note, not the cycle's."""
        from repotune import retention

        try:
            removed = retention.collect(self.settings).removed
        except (OSError, ValueError) as e:
            self.notes.append(f"retention (gc) failed: {e}")
            return
        if removed:
            self.notes.append(f"retention: removed {', '.join(r.name for r in removed)}")

    def _step(self, name: str, work: Callable[[], Any]) -> Any:
        cycles.update(self.db, self.run_id, step=name)
        self.on_step(name, "started", None)
        started = time.monotonic()
        try:
            value, figures = work()
        except _StepFailed as e:
            self._ended(cycles.Step(name, "failed", round(time.monotonic() - started, 2), {"error": e.message}))
            raise
        self._ended(cycles.Step(name, "done", round(time.monotonic() - started, 2), figures))
        return value

    def _ended(self, step: cycles.Step) -> None:
        self.steps.append(step)
        cycles.update(self.db, self.run_id, steps=self.steps)
        self.on_step(step.name, step.status, step)

    def _ingest(self) -> tuple[Any, dict[str, Any]]:
        from ingest.run import IngestError, ingest

        try:
            result = ingest(self.settings, progress=self.bars)
        except IngestError as e:
            raise _StepFailed("ingest", str(e)) from None
        figures = {"status": result.status, "run_id": result.run_id,
                   "items": {name: r.items for name, r in result.reports.items()},
                   "errors": result.errors}
        if result.status == "failed":
            raise _StepFailed("ingest", "; ".join(f"{k}: {v}" for k, v in result.errors.items()))
        if result.errors:  # e.g. GitHub unreachable: the cycle learns what the other sources read
            self.notes.append("ingest went on without " + "; ".join(f"{k} ({v})" for k, v in result.errors.items()))
        return result, figures

    def _build(self) -> tuple[tuple[Any, str | None], dict[str, Any]]:
        """(the dataset built, None) or (None, why there is nothing new to build one from)."""
        from tuner.data.build import DataError, NothingToTrain, build

        try:
            built = build(self.settings, progress=self.bars)
        except NothingToTrain as e:
            return (None, str(e)), {"nothing_new": str(e)}
        except DataError as e:
            raise _StepFailed("data", str(e)) from None
        return (built, None), {"dataset": built.manifest.hash, "reused": built.reused,
                               "counts": built.manifest.counts}

    def _train(self, dataset: str) -> tuple[Any, dict[str, Any]]:
        from tuner.train.run import TrainError, train

        def update(done: int, total: int, **metrics: float) -> None:
            loss = metrics.get("loss")
            self.bars("training", done, total, f"loss {loss:.3f}" if loss is not None else "")

        try:
            result = train(self.settings, dataset, progress=update)
        except TrainError as e:
            raise _StepFailed("train", str(e)) from None
        self.notes += [n for n in result.notes if n]
        r = result.record
        return result, {"version": result.adapter.version, "reused": result.reused, "examples": r.examples,
                        "steps": r.steps, "tokens": r.tokens, "seconds": r.seconds, "stopped": r.stopped,
                        "covers": r.covers.model_dump() if r.covers else None}

    def _judge(self, version: int) -> tuple[Any, dict[str, Any]]:
        from eval.judge import EvalRunError, judge

        try:
            run = judge(self.settings, version, progress=lambda stage, done, total: self.bars(stage, done, total, ""),
                        actor="cycle")
        except EvalRunError as e:
            raise _StepFailed("eval", str(e)) from None
        scores = {name: {"general": m.general, "general_mc": m.general_mc, "domain": m.domain}
                  for name, m in run.models.items()}
        flows = {pair: asdict(f) for pair, f in run.flows.items()}
        return run, {"status": run.status, "eval_run": run.id, "reasons": run.verdict.get("reasons"),
                     "scores": scores, "flows": flows, "report": run.report}


def _busy(db: Any) -> str:
    """What the refusal says when the lock is held: the running cycle, as its row tells it."""
    running = [r for r in cycles.runs(db, None, 5) if r.status == "running"]
    if not running:
        return "another cycle is running (its row is not written yet); try again when it ends"
    r = running[0]
    return (f"cycle {r.id} ({r.lineage}, started {r.started_at} by {r.trigger}, pid {r.pid}) is running, at step "
            f"{r.step or 'start'}; wait for it to end (`repotune tuner status`)")
