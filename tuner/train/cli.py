"""`repotune train`: a LoRA adapter from a dataset, registered as the lineage's next candidate."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from repotune.cli_common import EXIT_CONFIG, ConfigOpt, JsonOpt, fail, load_settings
from repotune.ui import err, out, print_json, progress_bar


def train_command(
    dataset: Annotated[str | None, typer.Option("--dataset", help="A dataset's hash (or its start); "
                                                "default: the latest.")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="auto, trl or unsloth (default: "
                                                "train.backend).")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help="full or incremental (default: "
                                                 "train.strategy).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a LoRA adapter on a dataset and register it as a candidate (a killed run resumes)."""
    from tuner.train.run import TrainError, train

    settings = load_settings(config, as_json)
    os.nice(settings.config.train.niceness)  # a server on the same machine keeps answering
    try:
        with progress_bar("training", quiet=as_json) as update:
            result = train(settings, dataset, backend, strategy, progress=update)
    except TrainError as e:
        fail(str(e), EXIT_CONFIG)
    if as_json:
        print_json(result.as_dict())
        return
    for note in result.notes:
        err.print(note, highlight=False, markup=False)
    r, a = result.record, result.adapter
    out.print(f"{a.lineage} v{a.version} ({a.status}): {a.path}", highlight=False)
    out.print(f"{r.steps:,} steps, {r.tokens:,} tokens in {r.seconds:,.1f} s ({r.tokens_per_s:,.0f} tokens/s), "
              f"stopped: {r.stopped}; knows the repository up to ingest cursor {a.manifest.ingest_cursor}",
              highlight=False)
