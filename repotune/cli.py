"""The `repotune` command line: thin shells over functions in the packages.

Each command loads the config (`--config PATH`, else `$REPOTUNE_CONFIG`, else
`./config.toml`), calls one library function and prints its result, as a rich table
for people or as JSON with `--json` for scripts. A bad config exits with code 2 and
names the key, file and line. Heavy imports stay inside the commands that need them, so
`repotune --help` answers at once. This module is where the packages' command groups
are composed; it is the one place in the kernel that names them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from eval.cli import app as eval_app
from ingest.cli import app as ingest_app
from repotune.cli_common import ConfigOpt, JsonOpt, fail, load_settings
from repotune.ui import out, print_json, progress_bar
from tuner.cli import tune_command, tuner_app
from tuner.data.cli import app as data_app
from tuner.train.cli import train_command

if TYPE_CHECKING:
    from repotune.manifests import AdapterManifest

app = typer.Typer(
    help="repotune: a self-hosted chatbot that knows a code repository and stays current with it.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show and check the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="The store: the SQLite database every package shares.", no_args_is_help=True)
base_app = typer.Typer(help="The base model: build builtin:tiny, resolve and fingerprint.", no_args_is_help=True)
adapters_app = typer.Typer(
    help="The adapter registry: register, list, show, diff, promote, roll back and retire versions.",
    no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(base_app, name="base")
app.add_typer(adapters_app, name="adapters")
app.add_typer(ingest_app, name="ingest")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.command("train")(train_command)
app.command("tune")(tune_command)
app.add_typer(tuner_app, name="tuner")

LineageOpt = Annotated[str | None, typer.Option("--lineage", help="The lineage (default: tuner.lineage).")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why: recorded in the event log.")]


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective config: defaults filled in, paths resolved, secrets masked."""
    settings = load_settings(config, as_json)
    data = settings.effective()
    if as_json:
        print_json({"source": str(settings.source) if settings.source else None, **data})
        return
    import tomli_w
    from rich.syntax import Syntax

    source = settings.source or "built-in defaults (no config file)"
    out.print(f"# effective config from {source}", highlight=False, markup=False)
    text = tomli_w.dumps(_drop_none(data))
    if out.is_terminal:
        out.print(Syntax(text, "toml", theme="ansi_dark", background_color="default"))
    else:
        print(text, end="")


@config_app.command("check")
def config_check(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Validate the config; exit 2 with every problem found."""
    settings = load_settings(config, as_json)
    source = str(settings.source) if settings.source else None
    if as_json:
        print_json({"ok": True, "source": source, "lineage": settings.lineage})
        return
    out.print(
        f"[green]ok[/] {source or 'built-in defaults'}: lineage {settings.lineage!r}, "
        f"base {settings.config.model.base!r}, data dir {settings.data_dir}",
        highlight=False,
    )


@db_app.command("status")
def db_status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Open the store (applying pending migrations) and show its tables."""
    from repotune import db as store

    settings = load_settings(config, as_json)
    try:
        conn = store.open_db(store.db_path(settings.data_dir))
    except store.StoreError as e:
        fail(str(e))
    info = store.status(conn)
    if as_json:
        print_json(info)
        return
    from rich.table import Table

    out.print(f"store {info['path']} ({info['journal_mode']}, {info['size_bytes']:,} bytes)", highlight=False)
    out.print(f"migrations applied: {len(info['migrations']['applied'])}", highlight=False)
    table = Table("table", "rows")
    for name, rows in info["tables"].items():
        table.add_row(name, f"{rows:,}")
    out.print(table if info["tables"] else "no tables yet")


@base_app.command("build")
def base_build(
    name: Annotated[str, typer.Argument(help="builtin:tiny or builtin:smol.")] = "builtin:tiny",
    tokenizer_only: Annotated[bool, typer.Option("--tokenizer-only", help="Only builtin:tiny's tokenizer.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build a built-in base model (at once when cached) and print its folder and fingerprint."""
    from repotune import builtin, models

    if tokenizer_only:
        if name != builtin.NAME:
            fail(f"--tokenizer-only builds builtin:tiny's tokenizer; {name}'s comes with its weights")
        built = builtin.build_tokenizer()
        info: dict[str, Any] = {"tokenizer": str(built.path), "cached": built.cached}
    else:
        try:
            with progress_bar(f"building {name}", quiet=as_json) as update:
                built = models.build_builtin(name, progress=lambda stage, done, total, m: update(done, total, **m))
        except models.ModelError as e:
            fail(str(e))
        info = _model_info(built.path, models.fingerprint(built.path)) | {"cached": built.cached}
    info["seconds"] = round(built.seconds, 2)
    _print_info(info, as_json)


@base_app.command("show")
def base_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Resolve the configured base model (building or fetching it) and print its fingerprint."""
    from repotune import models

    settings = load_settings(config, as_json)
    try:
        with progress_bar(f"resolving {settings.config.model.base}", quiet=as_json) as update:
            base = models.resolve(settings.config.model.base, lambda s, d, t, m: update(d, t, **m))
    except models.ModelError as e:
        fail(str(e))
    _print_info({"base": base.spec} | _model_info(base.path, base.fingerprint), as_json)


@adapters_app.command("register")
def adapters_register(
    folder: Annotated[Path, typer.Argument(help="A PEFT LoRA adapter folder.")],
    lineage: LineageOpt = None,
    reason: ReasonOpt = "",
    assume_base: Annotated[
        bool, typer.Option("--assume-base", help="It has no manifest; it was trained on the configured base.")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy an adapter in as the lineage's next version (status candidate), after checks."""
    from repotune import models, registry

    settings = load_settings(config, as_json)
    db = _store(settings)
    try:
        base = models.resolve(settings.config.model.base)
        adapter = registry.register(
            db, settings.data_dir, lineage or settings.lineage, folder, base,
            settings.config.serve.max_lora_rank, _actor(), reason, assume_base=assume_base,
        )
    except (models.ModelError, registry.RegistryError) as e:
        fail(str(e))
    _print_adapter(adapter, as_json)


@adapters_app.command("list")
def adapters_list(lineage: LineageOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every version of the lineage: status, dates, base, scores and knowledge cursor."""
    from repotune import registry

    settings = load_settings(config, as_json)
    name = lineage or settings.lineage
    rows = registry.versions(_store(settings), name)
    if as_json:
        print_json([_adapter_json(a) for a in rows])
        return
    from rich.table import Table

    table = Table("version", "status", "created", "promoted", "base", "scores", "knowledge", title=f"lineage {name}")
    for a in rows:
        style = {"promoted": "bold green", "retired": "dim", "failed": "red", "rejected": "yellow"}.get(a.status)
        table.add_row(
            f"v{a.version}", a.status, a.created_at, a.promoted_at or "", a.base_fingerprint,
            _scores(a.manifest), str(a.manifest.ingest_cursor or ""), style=style,
        )
    out.print(table if rows else f"lineage {name} has no adapters yet")


@adapters_app.command("promote")
def adapters_promote(
    version: Annotated[str, typer.Argument(help="The version: 7 or v7.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded in the event log.")],
    lineage: LineageOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a version the one the lineage's alias serves; the current one becomes superseded."""
    _swap(config, lineage, "promote", version, reason, as_json)


@adapters_app.command("rollback")
def adapters_rollback(
    to: Annotated[str | None, typer.Option("--to", help="Version to return to (default: newest superseded).")] = None,
    reason: ReasonOpt = "rollback",
    lineage: LineageOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Promote an earlier version again: the newest superseded one, or --to V."""
    _swap(config, lineage, "rollback", to, reason, as_json)


def _swap(config: Any, lineage: str | None, action: str, version: str | None, reason: str, as_json: bool) -> None:
    """Promote or roll back (repotune.promotion): through the running server if there is one."""
    from repotune import promotion, registry

    settings = load_settings(config, as_json)
    name = lineage or settings.lineage
    try:
        wanted = registry.parse_version(version) if version else None
        if action == "promote":
            assert wanted is not None
            gate = registry.get(_store(settings), name, wanted).manifest.gate
            if gate is not None and gate.decision == "reject":  # the admin overrides the gate: say so beside why
                reason = f"{reason} (forced over the gate's rejection: {'; '.join(gate.reasons)})"
            adapter = promotion.promote(settings, name, wanted, _actor(), reason)
        else:
            adapter = promotion.rollback(settings, name, _actor(), reason, to=wanted)
    except registry.RegistryError as e:
        fail(str(e))
    _print_adapter(adapter, as_json)


@adapters_app.command("retire")
def adapters_retire(
    version: Annotated[str, typer.Argument(help="The version: 7 or v7.")],
    reason: ReasonOpt = "retired",
    lineage: LineageOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retire a version for good: it is never served or promoted again."""
    from repotune import registry

    settings = load_settings(config, as_json)
    try:
        adapter = registry.transition(
            _store(settings), lineage or settings.lineage, registry.parse_version(version), "retired", _actor(), reason
        )
    except registry.RegistryError as e:
        fail(str(e))
    _print_adapter(adapter, as_json)


@adapters_app.command("show")
def adapters_show(
    version: Annotated[str, typer.Argument(help="The version: 7 or v7.")],
    lineage: LineageOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One version: its manifest, scores, the gate's decision and the report's folder."""
    from dataclasses import asdict

    from eval import history
    from repotune import registry

    settings = load_settings(config, as_json)
    db = _store(settings)
    name = lineage or settings.lineage
    try:
        adapter = registry.get(db, name, registry.parse_version(version))
    except registry.RegistryError as e:
        fail(str(e))
    judged = history.last_judgement(db, name, adapter.version)
    if as_json:
        print_json(_adapter_json(adapter) | {"gate_run": asdict(judged) if judged else None})
        return
    m = adapter.manifest
    out.print(f"{name} v{adapter.version}: {adapter.status} ({adapter.path})", highlight=False)
    out.print(f"base {adapter.base_model} ({adapter.base_fingerprint}); dataset {m.dataset or 'unknown'}; "
              f"created {adapter.created_at}" + (f"; promoted {adapter.promoted_at}" if adapter.promoted_at else ""),
              highlight=False)
    if m.training:
        t = m.training
        out.print(f"trained: {t.backend}, {t.strategy}, {t.examples} examples, {t.tokens} tokens, {t.seconds:.0f} s",
                  highlight=False)
    if m.scores:
        out.print("scores: " + _scores(m), highlight=False)
    if m.gate:
        out.print(f"gate: {m.gate.decision} ({m.gate.decided_at})", highlight=False)
        for reason in m.gate.reasons:
            out.print(f"  {reason}", highlight=False)
    if judged:
        out.print(f"last gate run #{judged.run}: {judged.status}"
                  + (f", report {judged.report}" if judged.report else "")
                  + (f", error: {judged.error}" if judged.error else ""), highlight=False)


@adapters_app.command("diff")
def adapters_diff(
    first: Annotated[str, typer.Argument(help="A version: 7 or v7.")],
    second: Annotated[str, typer.Argument(help="Another version.")],
    lineage: LineageOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The questions whose answer went from right to wrong (or back) between two judged versions."""
    from dataclasses import asdict

    from eval import history
    from repotune import registry

    settings = load_settings(config, as_json)
    db = _store(settings)
    name = lineage or settings.lineage
    try:
        a, b = registry.parse_version(first), registry.parse_version(second)
        registry.get(db, name, a), registry.get(db, name, b)
    except registry.RegistryError as e:
        fail(str(e))
    d = history.diff(db, name, a, b)
    if not d.compared:
        fail(f"{name} v{a} and v{b} have no question both answered: judge both (repotune eval run)")
    if as_json:
        print_json(asdict(d) | {"right_to_wrong": len(d.right_to_wrong), "wrong_to_right": len(d.wrong_to_right)})
        return
    from rich.table import Table

    table = Table("suite", "question", f"v{a}", f"v{b}",
                  title=f"{name} v{a} → v{b}: {len(d.right_to_wrong)} right → wrong, "
                        f"{len(d.wrong_to_right)} wrong → right, of {d.compared} questions")
    for c in d.changes:
        table.add_row(c.suite, c.question, ("✓ " if c.right_before else "✗ ") + c.before,
                      ("✓ " if c.right_after else "✗ ") + c.after)
    out.print(table)


def _store(settings: Any) -> Any:
    from repotune import db as store

    try:
        return store.open_db(store.db_path(settings.data_dir))
    except store.StoreError as e:
        fail(str(e))


def _actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _scores(manifest: AdapterManifest) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in manifest.scores.items())


def _adapter_json(adapter: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(adapter)
    data["path"] = str(adapter.path)
    data["manifest"] = adapter.manifest.dump()
    data["engine_name"] = adapter.engine_name
    return data


def _print_adapter(adapter: Any, as_json: bool) -> None:
    if as_json:
        print_json(_adapter_json(adapter))
    else:
        out.print(f"{adapter.lineage} v{adapter.version}: {adapter.status} ({adapter.path})", highlight=False)


@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to listen on (default: serve.port).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the OpenAI-compatible API: the gateway and a supervised vLLM engine."""
    import logging

    from repotune import models
    from serve import server

    settings = load_settings(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server.run(settings, host, port)
    except (server.ServeError, models.ModelError) as e:
        fail(str(e))


@app.command("gc")
def gc_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply [retention]: retire and remove old adapter versions and datasets (never the promoted version or
    the newest superseded); refused while a cycle runs."""
    from repotune import cycles, retention

    settings = load_settings(config, as_json)
    try:
        with cycles.held(settings.data_dir, cycles.CYCLE_LOCK, "a cycle is running; run gc when it ends"):
            result = retention.collect(settings, dry_run)
    except cycles.Busy as e:
        fail(str(e), 4)
    if as_json:
        print_json(result.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for r in result.removed:
        out.print(f"{verb} {r.kind} {r.name} ({r.bytes / 2**20:,.1f} MB)", highlight=False)
    out.print(f"{verb} {len(result.removed)}, {result.freed_bytes / 2**20:,.1f} MB", highlight=False)


@app.command("up")
def up_command(config: ConfigOpt = None) -> None:
    """Serve and tune: the server and the tuner as two child processes; with nothing promoted yet, a
    first cycle starts at once while base answers. Prints how to connect; Ctrl-C stops everything."""
    from repotune import models, up

    settings = load_settings(config)
    spec = settings.config.model.base
    # the base once, here, before the server and the tuner would each build or fetch it
    try:
        with progress_bar(f"base {spec}") as update:
            models.resolve(spec, progress=lambda stage, done, total, m: update(done, total, **m))
    except models.ModelError as e:
        fail(str(e))
    code = up.run(settings, lambda text: out.print(text, highlight=False, markup=False))
    raise typer.Exit(code)


def _model_info(path: Any, fingerprint: str) -> dict[str, Any]:
    import json

    info: dict[str, Any] = {"path": str(path), "fingerprint": fingerprint}
    record = path / "repotune-build.json"
    if record.is_file():
        built = json.loads(record.read_text())
        info |= {"parameters": built["parameters"], "build_seconds": built["build_seconds"]}
    return info


def _print_info(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(info)
        return
    for key, value in info.items():
        out.print(f"{key:>14}  {value:,}" if isinstance(value, int) and not isinstance(value, bool)
                  else f"{key:>14}  {value}", highlight=False)


def _drop_none(data: Any) -> Any:
    """TOML has no null: leave unset values out of the printed config."""
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_none(v) for v in data if v is not None]
    return data


def main() -> None:
    app(prog_name="repotune")


if __name__ == "__main__":
    main()
