"""`repotune tune --now` (one cycle in the foreground), `repotune tuner` (the daemon) and `tuner status`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from repotune.cli_common import ConfigOpt, JsonOpt, fail, load_settings
from repotune.ui import err, out, print_json, progress_bars

tuner_app = typer.Typer(help="The nightly tuner: a daemon that runs a cycle on schedule.cron and on webhook "
                        "requests (a command group: see `tuner status`).")
NOT_PROMOTED = 3  # the cycle ran and its adapter was rejected, as `eval run` exits


def tune_command(
    now: Annotated[bool, typer.Option("--now", help="Run one cycle now, in the foreground.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train even when the dataset and the training settings "
                                        "are those of the last cycle.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One cycle: ingest, data build, train, eval and gate, promote or reject (the server swaps live).

    Exits 0 when the new adapter is promoted or nothing was new, 3 when it is rejected, 1 when a
    step failed (the served adapter is unchanged), 4 when another cycle is running."""
    from repotune import cycles
    from tuner.cycle import CycleError, cycle, step_line

    if not now:
        fail("say --now to run a cycle now; `repotune tuner` runs them on the schedule")
    settings = load_settings(config, as_json)
    os.nice(settings.config.train.niceness)  # a server on the same machine keeps answering

    def on_step(name: str, state: str, step: cycles.Step | None) -> None:
        if not as_json:
            err.print(step_line(name, state, step), highlight=False)

    try:
        with progress_bars(quiet=as_json) as bars:
            outcome = cycle(settings, "now", force, on_step=on_step, bars=bars)
    except cycles.Busy as e:
        fail(str(e), 4)
    except CycleError as e:
        fail(str(e))
    if as_json:
        print_json(outcome.as_dict())
    else:
        for note in outcome.notes:
            err.print(note, highlight=False, markup=False)
        out.print(outcome.line(), highlight=False)
    if outcome.status == "rejected":
        raise typer.Exit(NOT_PROMOTED)


@tuner_app.callback(invoke_without_command=True)
def tuner_command(
    ctx: typer.Context,
    first_now: Annotated[bool, typer.Option("--first-now", help="With no promoted adapter yet, run a cycle at "
                                            "start.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Run cycles on schedule.cron and when the webhook asks, until Ctrl-C or SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    from repotune import cycles
    from tuner.schedule import run_daemon

    settings = load_settings(config)
    os.nice(settings.config.train.niceness)
    try:
        run_daemon(settings, lambda line: err.print(line, highlight=False, markup=False), first_now)
    except cycles.Busy as e:
        fail(str(e), 4)


@tuner_app.command("status")
def status_command(
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many of the last cycles to show.")] = 10,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The tuner: whether it runs, the next scheduled cycle, requests waiting, the last cycles and their figures."""
    from tuner.schedule import status

    settings = load_settings(config, as_json)
    s = status(settings, limit)
    if as_json:
        print_json(s.as_dict())
        return
    out.print(f"tuner for {s.lineage}: {'running' if s.running else 'not running'}"
              + ("; a cycle is running now" if s.cycle_running else "")
              + f"; next scheduled cycle {s.next_run} ({s.cron}, {s.timezone})", highlight=False)
    out.print(f"promoted: {'v' + str(s.promoted) if s.promoted else 'none (base is served)'}; "
              f"webhook requests waiting: {len(s.pending)}; failures in a row: {s.failures_in_a_row}",
              highlight=False)
    if not s.runs:
        out.print("no cycle has run yet", highlight=False)
        return
    from rich.table import Table

    table = Table("run", "trigger", "started", "status", "version", "steps (s)", "note")
    for r in s.runs:
        table.add_row(str(r.id), r.trigger, r.started_at, r.status, f"v{r.version}" if r.version else "",
                      ", ".join(f"{st.name} {st.seconds:,.1f}" for st in r.steps), _short(r.error or ""))
    out.print(table)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
