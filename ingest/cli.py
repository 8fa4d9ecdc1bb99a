"""`repotune ingest` (run the sources) and `repotune ingest status`."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer

from repotune.cli_common import ConfigOpt, JsonOpt, fail, load_settings
from repotune.ui import err, out, print_json, progress_bars

app = typer.Typer(help="Read the repository into the store: commits, files and docs, secrets redacted.")


@app.callback(invoke_without_command=True)
def ingest_command(
    ctx: typer.Context,
    full: Annotated[bool, typer.Option("--full", help="Read everything again, ignoring the cursors.")] = False,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Run only this source (repeatable): git, github, snapshot, docs."),
    ] = None,
    repo: Annotated[str | None, typer.Option("--repo", help="A path or clone URL instead of ingest.repo.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest what is new since the last run (a command group: see `ingest status`)."""
    if ctx.invoked_subcommand is not None:
        return
    from ingest import workers
    from repotune.models import ModelError

    settings = load_settings(config, as_json)
    # The workers fork first, and set themselves up (detect-secrets, the tokenizer: about a
    # fifth of a second each) while the rest of ingest is imported and the store opened.
    pool = workers.pool_for(settings)
    with contextlib.suppress(ModelError, OSError):  # the run reports it, source by source
        pool.start()
    try:
        from ingest.run import IngestError, ingest

        with progress_bars(quiet=as_json) as progress:
            result = ingest(settings, full=full, sources=source, repo=repo, progress=progress, pool=pool)
    except IngestError as e:
        fail(str(e))
    finally:
        pool.close()
    if as_json:
        print_json(result.as_dict())
    else:
        _print_result(result)
    if result.errors:
        raise typer.Exit(1)


@app.command("status")
def status_command(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """What the store holds: counts, cursors, the last run and the secrets redacted."""
    from ingest.store import status
    from repotune import db as store

    settings = load_settings(config, as_json)
    try:
        info = status(store.open_db(store.db_path(settings.data_dir)))
    except store.StoreError as e:
        fail(str(e))
    if as_json:
        print_json(info)
        return
    from rich.table import Table

    counts = Table("what", "count")
    for key, value in info["counts"].items():
        counts.add_row(key.replace("_", " "), f"{value:,}")
    out.print(counts)
    for cursor in info["cursors"]:
        out.print(f"cursor {cursor['source']} ({cursor['repo']}): updated {cursor['updated_at']}", highlight=False)
    if info["redactions"]:
        out.print("redacted: " + ", ".join(f"{k} {v}" for k, v in sorted(info["redactions"].items())),
                  highlight=False)
    run = info["last_run"]
    if run:
        out.print(f"last run #{run['id']}: {run['status']}, {run['started_at']} → {run['finished_at']}",
                  highlight=False)
        if run["error"]:
            out.print(f"  error: {run['error']}", highlight=False, markup=False)


def _print_result(result: Any) -> None:
    for name, report in result.reports.items():
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items()))
        line = f"{name}: {report.items:,} stored" + (f"; skipped: {skipped}" if skipped else "")
        out.print(line + (f" ({report.note})" if report.note else ""), highlight=False, markup=False)
    for name, error in result.errors.items():
        err.print(f"{name}: failed: {error}", highlight=False, markup=False)
    if result.redactions:
        out.print("secrets redacted: " + ", ".join(f"{k} {v}" for k, v in sorted(result.redactions.items())),
                  highlight=False)
    if result.index is not None:
        out.print(f"domain index: {result.index.documents:,} documents ({result.index.hash or 'empty'}); "
                  f"server: {result.index.server}", highlight=False, markup=False)
