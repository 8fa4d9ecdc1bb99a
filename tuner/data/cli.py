"""`repotune data build / show / stats`: training datasets from what was ingested."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from repotune.cli_common import ConfigOpt, JsonOpt, fail, load_settings
from repotune.ui import err, out, print_json, progress_bars

if TYPE_CHECKING:
    from repotune.manifests import DatasetManifest

app = typer.Typer(help="Training data: template and teacher Q&A, refusals, replay and raw text, built into datasets.")

EXIT_NOTHING = 3  # nothing new to train on: the nightly cycle stops here, and says so

DatasetOpt = Annotated[
    str | None, typer.Option("--dataset", help="A dataset's hash (or its start); default: the latest.")
]


@app.command("build")
def build_command(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Build a dataset from the store (reused when the same data was built before)."""
    from tuner.data.build import DataError, NothingToTrain, build

    settings = load_settings(config, as_json)
    try:
        with progress_bars(quiet=as_json) as progress:
            built = build(settings, progress)
    except NothingToTrain as e:
        fail(str(e), EXIT_NOTHING)
    except DataError as e:
        fail(str(e))
    for warning in built.warnings:
        err.print(f"warning: {warning}", highlight=False, markup=False)
    if as_json:
        print_json(built.as_dict())
        return
    c = built.manifest.counts
    out.print(f"dataset {built.manifest.hash} ({'unchanged, reused' if built.reused else 'new'}): {built.path}",
              highlight=False)
    out.print(f"train {c['train']:,}, val {c['val']:,}, eval {c['eval']:,}, raw {c['raw']:,}; "
              f"new {c['new']:,}, replayed {c['replay']:,}", highlight=False)
    _print_generators(built.manifest)
    if built.manifest.teacher:
        t = built.manifest.teacher
        out.print(f"teacher: {t['chunks']:,} chunks, {t['requests']:,} requests sent, {t['cached']:,} from the cache, "
                  f"{t['malformed']:,} malformed, {t['kept']:,} of {t['pairs']:,} pairs kept", highlight=False)


@app.command("stats")
def stats_command(dataset: DatasetOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Counts and tokens per generator and kind of a dataset."""
    from tuner.data.build import DataError, latest, manifest_of

    settings = load_settings(config, as_json)
    try:
        folder = latest(settings, dataset)
        manifest = manifest_of(folder)
    except DataError as e:
        fail(str(e))
    if as_json:
        print_json({"path": str(folder), **manifest.dump()})
        return
    out.print(f"dataset {manifest.hash} of {manifest.lineage}, built {manifest.created_at} for "
              f"{manifest.base_model} ({manifest.base_fingerprint}), ingest cursor {manifest.ingest_cursor}",
              highlight=False)
    out.print(", ".join(f"{k} {v:,}" for k, v in manifest.counts.items()), highlight=False)
    _print_generators(manifest)


@app.command("show")
def show_command(
    sample: Annotated[int, typer.Option("--sample", min=1, help="How many examples to show.")] = 5,
    split: Annotated[str, typer.Option("--split", help="train, val, eval or raw.")] = "train",
    dataset: DatasetOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A sample of a dataset's examples, with their sources."""
    from tuner.data.build import DataError, latest, read
    from tuner.data.examples import fraction

    if split not in ("train", "val", "eval", "raw"):
        fail(f"no split {split!r}: train, val, eval or raw")
    settings = load_settings(config, as_json)
    try:
        rows = read(latest(settings, dataset), split)
    except DataError as e:
        fail(str(e))
    picked = sorted(rows, key=lambda r: fraction("show", r.get("id") or r.get("text")))[:sample]
    if as_json:
        print_json(picked)
        return
    from rich.table import Table

    table = Table("kind", "question" if split != "raw" else "text", "answer", "sources", show_lines=True)
    for r in picked:
        sources = ", ".join(f"{k} {_short(v)}" for k, v in r.get("sources", {}).items())
        if split == "raw":
            table.add_row(r["kind"], _clip(r["text"], 400), "", sources)
        else:
            q = r["messages"][0]["content"]
            a = r["messages"][-1]["content"]
            table.add_row(f"{r['generator']}/{r['kind']}" + (" (new)" if r.get("new") else ""), _clip(q, 200),
                          _clip(a, 400), sources)
    out.print(table)


def _print_generators(manifest: DatasetManifest) -> None:
    from rich.table import Table

    table = Table("generator", "kind", "examples", "tokens", "new")
    for generator, kinds in manifest.generators.items():
        for kind, c in kinds.items():
            table.add_row(generator, kind, f"{c.get('examples', 0):,}", f"{c.get('tokens', 0):,}",
                          f"{c.get('new', 0):,}")
    out.print(table)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} chunk{'s' if len(value) != 1 else ''}"
    return str(value)[:60]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
