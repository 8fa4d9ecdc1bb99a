"""What every command shares: the --config and --json options, and how failures exit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from repotune import config as cfg
from repotune.ui import err

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $REPOTUNE_CONFIG, then ./config.toml)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

EXIT_FAILED = 1
EXIT_CONFIG = 2


def load_settings(path: Path | None, as_json: bool = False) -> cfg.Settings:
    """Load the config or exit with code 2 and every problem it has."""
    try:
        return cfg.load(path)
    except cfg.ConfigError as e:
        if as_json:
            print(json.dumps({"ok": False, "errors": e.problems}, indent=2))
        else:
            err.print("[bold red]config error[/]", highlight=False)
            for p in e.problems:
                err.print(f"  {p}", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Stop the command with a one-line reason on stderr (no stack trace)."""
    from rich.text import Text

    err.print(Text.assemble(("error ", "bold red"), message))
    raise typer.Exit(code)
