"""The `repotune` command line: thin shells over functions in the packages.

Each command loads the config (`--config PATH`, else `$REPOTUNE_CONFIG`, else
`./config.toml`), calls one library function and prints its result, as a rich table
for people or as JSON with `--json` for scripts. A bad config exits with code 2 and
names the key, file and line. Heavy imports stay inside the commands that need them, so
`repotune --help` answers at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from repotune import config as cfg

app = typer.Typer(
    help="repotune: a self-hosted chatbot that knows a code repository and stays current with it.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show and check the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="The store: the SQLite database every package shares.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $REPOTUNE_CONFIG, then ./config.toml)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

EXIT_CONFIG = 2


def load_settings(path: Path | None, as_json: bool = False) -> cfg.Settings:
    """Load the config or exit with code 2 and every problem it has."""
    try:
        return cfg.load(path)
    except cfg.ConfigError as e:
        fail_config(e.problems, as_json)


def fail_config(problems: list[str], as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps({"ok": False, "errors": problems}, indent=2))
    else:
        err.print("[bold red]config error[/]", highlight=False)
        for p in problems:
            err.print(f"  {p}", highlight=False, markup=False)
    raise typer.Exit(EXIT_CONFIG)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


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
        err.print(f"[bold red]store error[/] {e}", highlight=False)
        raise typer.Exit(1) from None
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
