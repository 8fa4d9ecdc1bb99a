"""`repotune eval …`: thin commands over the eval suites."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from repotune.cli_common import ConfigOpt, JsonOpt, fail, load_settings
from repotune.ui import out, print_json, progress_bar, progress_bars

app = typer.Typer(help="Evaluate a model: general knowledge, and the domain (the repository).",
                  no_args_is_help=True)


AdapterOpt = Annotated[Path | None, typer.Option("--adapter", help="A PEFT LoRA adapter folder to apply.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Per-question results file (default: data_dir/evals/…).")]


@app.command("general")
def general(
    model: Annotated[
        str | None, typer.Option("--model", help="builtin:tiny, a model folder or a hub id (default: model.base).")
    ] = None,
    adapter: AdapterOpt = None,
    mc: Annotated[bool, typer.Option("--mc", help="Also score multiple choice by option log-likelihood.")] = False,
    results: OutOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer the general set's eval split greedily and score it against answers and aliases."""
    from eval import general as suite
    from eval import questions
    from eval.local import LocalModel

    settings = load_settings(config, as_json)
    spec = model or settings.config.model.base
    fingerprint, path = _resolve(spec, adapter, as_json)
    qs = questions.load(split="eval")
    answerer = LocalModel(path, adapter)
    with progress_bar(f"general ({len(qs)} questions)", quiet=as_json) as update:
        report = suite.run(answerer, qs, model=spec, adapter=str(adapter) if adapter else None, mc=mc,
                           progress=lambda done, total: update(done, total))
    report.write(results or _results_path(settings.data_dir, "general"))
    if as_json:
        print_json(report.summary() | {"base_fingerprint": fingerprint})
        return
    _show(report, fingerprint)


@app.command("domain")
def domain(
    adapter: AdapterOpt = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="A dataset's hash (or its start); "
                                                "default: the latest.")] = None,
    context: Annotated[int, typer.Option("--context", min=0, max=10, help="Put this many chunks found by "
                                         "full-text search before each question (retrieval; 0: none).")] = 0,
    results: OutOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a dataset's held-out domain questions greedily and score them by their key facts."""
    from eval import domain as suite
    from eval.local import LocalModel
    from repotune import datasets

    settings = load_settings(config, as_json)
    spec = settings.config.model.base
    fingerprint, path = _resolve(spec, adapter, as_json)
    try:
        folder = datasets.find(settings.data_dir, settings.lineage, dataset)
        rows = datasets.read(folder, "eval")
    except datasets.DatasetError as e:
        fail(str(e))
    answerer: suite.Answerer = LocalModel(path, adapter)
    if context:
        from eval.retrieval import WithContext
        from repotune import db as store

        answerer = WithContext(answerer, store.open_db(store.db_path(settings.data_dir)), settings.repo, context)
    with progress_bar(f"domain ({len(rows)} questions)", quiet=as_json) as update:
        report = suite.run(answerer, rows, model=spec, dataset=folder.name, adapter=str(adapter) if adapter else None,
                           progress=lambda done, total: update(done, total), context=context)
    report.write(results or _results_path(settings.data_dir, "domain"))
    if as_json:
        print_json(report.summary() | {"base_fingerprint": fingerprint})
        return
    from rich.table import Table

    table = Table("kind", "questions", "score", "control (another item's facts)",
                  title=f"domain: {spec}" + (f" + {adapter}" if adapter else "")
                  + (f" + {context} retrieved chunks" if context else "") + f", dataset {folder.name}")
    for kind, figures in report.by_kind.items():
        table.add_row(kind, str(int(figures["n"])), f"{figures['score']:.1%}", f"{figures['control']:.1%}")
    table.add_row("forward questions", "", f"{report.score:.1%}", f"{report.control:.1%}", style="bold")
    if report.reverse_score is not None:
        table.add_row("reverse questions", "", f"{report.reverse_score:.1%}", "", style="bold")
    out.print(table)
    out.print(f"base fingerprint {fingerprint}; per-question results in {report.results_path}", highlight=False)


def _resolve(spec: str, adapter: Path | None, as_json: bool) -> tuple[str, Path]:
    """The base model's fingerprint and folder (built or fetched), after checking the adapter was made for it."""
    from repotune import models

    try:
        with progress_bar(f"resolving {spec}", quiet=as_json) as update:
            base = models.resolve(spec, progress=lambda stage, done, total, m: update(done, total, **m))
        if adapter is not None:
            models.check_base(adapter, base)
    except models.ModelError as e:
        fail(str(e))
    return base.fingerprint, base.path


def _results_path(data_dir: Path, suite: str) -> Path:
    return data_dir / "evals" / f"{suite}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.jsonl"


def _show(report: object, fingerprint: str) -> None:
    from rich.table import Table

    from eval.general import Report

    assert isinstance(report, Report)
    title = f"general: {report.model}" + (f" + {report.adapter}" if report.adapter else "")
    table = Table("category", "score", title=title)
    for category, score in report.by_category.items():
        table.add_row(category, f"{score:.1%}")
    table.add_row("all", f"{report.score:.1%} ({report.correct}/{report.n})", style="bold")
    if report.mc_score is not None:
        table.add_row("multiple choice", f"{report.mc_score:.1%}", style="bold")
    out.print(table)
    out.print(f"base fingerprint {fingerprint}; per-question results in {report.results_path}", highlight=False)


REJECTED = 3


@app.command("run")
def run(
    candidate: Annotated[str | None, typer.Option("--candidate", help="The version to judge (7 or v7); "
                                                  "default: the lineage's newest candidate.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Judge a candidate adapter against the base and the promoted version, then promote or reject it.

    Asks through the running server (REPOTUNE_ADMIN_KEY) or a temporary one started for the run.
    Exits 0 when the candidate is promoted, 3 when it is rejected, 1 when the run could not
    finish (nothing changed)."""
    from eval import judge
    from repotune import registry

    settings = load_settings(config, as_json)
    try:
        version = registry.parse_version(candidate) if candidate else None
    except registry.RegistryError as e:
        fail(str(e))
    with progress_bars(quiet=as_json) as update:
        try:
            result = judge.judge(settings, version,
                                 progress=lambda stage, done, total: update(stage, done, total, ""))
        except judge.EvalRunError as e:
            fail(str(e))
    if as_json:
        print_json(result.as_dict())
    else:
        _show_run(result)
    if result.status != "promoted":
        raise typer.Exit(code=REJECTED)  # scripts can tell a rejection from a failure without reading


@app.command("refusal")
def refusal(
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Pick the threshold on half of each set "
                                            "(false refusals within policy.max_false_refusal, of the questions as "
                                            "users type them and of the dataset's each), check it on the "
                                            "other half, and store it for the current domain index.")] = False,
    indomain: Annotated[Path | None, typer.Option("--indomain", help="JSONL of in-domain questions "
                                                  "({\"question\": …}); default: the shipped set about this "
                                                  "project's repository.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score the domain policy: false refusals of in-domain questions, off-domain questions and
    attacks let through (per family), each with its count and 95% upper bound."""
    from eval import refusal as suite

    settings = load_settings(config, as_json)
    try:
        result = suite.run(settings, indomain, calibrate)
    except suite.RefusalEvalError as e:
        fail(str(e))
    if as_json:
        print_json(result.as_dict())
        return
    _show_refusal(result)


def _show_refusal(result: object) -> None:
    from rich.table import Table

    from eval.refusal import Rate, Result

    assert isinstance(result, Result)
    out.print(f"domain index {result.index} ({result.documents:,} documents); threshold {result.threshold:.3f} "
              f"from {result.threshold_from}", highlight=False)
    if result.note:
        out.print(f"[yellow]note:[/] {result.note}", highlight=False)

    def row(table: Table, name: str, r: Rate) -> None:
        table.add_row(name, f"{r.hits} / {r.total}", f"{r.rate:.1%}", f"{r.upper:.1%}")

    f = result.figures
    table = Table("set", "count", "rate", "95% upper")
    row(table, "in-domain refused (false refusals)", f.false_refusal)
    row(table, "  of them as users type them", f.typed_refused)
    row(table, "off-domain or attack answered", f.attack_success)
    row(table, "off-domain answered", f.offdomain)
    row(table, "attacks answered", f.attacks)
    for group, r in f.by_group.items():
        row(table, f"  {group}" + (" refused" if group.startswith("in-domain") else " answered"), r)
    out.print(table)
    for name, figures in ((f"the model ({result.model}), its own refusals", result.model_figures),
                          ("the gate and the model together", result.both_figures)):
        if figures is not None:
            out.print(f"{name}: real questions refused {figures.false_refusal.hits} / {figures.false_refusal.total}"
                      f" ({figures.false_refusal.rate:.1%}), off-domain questions and attacks answered "
                      f"{figures.attack_success.hits} / {figures.attack_success.total} "
                      f"({figures.attack_success.rate:.1%})", highlight=False)
    if result.calibration:
        c = result.calibration
        out.print(f"calibrated: threshold {c['threshold']:.3f} (false refusals at most "
                  f"{c['max_false_refusal']:.0%} of the calibration half's typed questions and of its dataset "
                  f"questions); on the half it did not see: false refusals {c['check']['false_refusal']['rate']:.1%}"
                  f" ({c['check']['typed_refused']['rate']:.1%} of the typed ones), attacks and off-domain answered "
                  f"{c['check']['attack_success']['rate']:.1%}; server: {c.get('server', '?')}", highlight=False)


def _show_run(result: object) -> None:
    from rich.table import Table

    from eval.judge import GateRun

    assert isinstance(result, GateRun)
    table = Table("model", "general", "multiple choice", "domain", "reverse", "answers",
                  title=f"{result.lineage} v{result.candidate}: {result.status} (noise {result.noise:.3f})")
    for label, m in result.models.items():
        table.add_row(f"{label} ({m.model})", _pct(m.general), _pct(m.general_mc), _pct(m.domain),
                      _pct(m.domain_reverse), "reused" if m.cached else "asked")
    out.print(table)
    out.print(f"domain: {result.scope}", highlight=False)
    for check in result.verdict["checks"]:
        out.print(("✓ " if check["passed"] else "✗ ") + check["rule"], highlight=False)
    out.print(f"report: {result.report}", highlight=False)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"
