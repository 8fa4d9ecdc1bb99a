"""The CLI as a whole: every command documented, and `--help` fast."""

from __future__ import annotations

import re
import subprocess
import sys

import typer

from repotune.cli import app

from .conftest import ROOT


def leaf_commands(cmd, prefix: str = "repotune") -> dict:
    if hasattr(cmd, "list_commands"):  # a group
        ctx = typer.Context(cmd)
        found: dict = {prefix: cmd} if cmd.invoke_without_command and prefix != "repotune" else {}
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            found |= leaf_commands(sub, f"{prefix} {name}")
        return found
    return {prefix: cmd}


def readme_cli_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## CLI\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, "README.md has no '## CLI' section"
    return match.group(1)


def test_every_command_has_help_and_is_in_the_readme():
    root = typer.main.get_command(app)
    commands = leaf_commands(root)
    assert "repotune config show" in commands
    section = readme_cli_section()
    for name, cmd in commands.items():
        assert (cmd.help or "").strip(), f"{name} has no help text"
        assert f"`{name}" in section, f"{name} is missing from the README's CLI section"
    ctx = typer.Context(root)
    for name in root.list_commands(ctx):
        group = root.get_command(ctx, name)
        assert group is not None and (group.help or "").strip(), f"repotune {name} has no help text"


def test_readme_lists_no_command_that_does_not_exist():
    commands = leaf_commands(typer.main.get_command(app))
    for listed in re.findall(r"`(repotune [a-z][a-z -]*?)(?: [A-Z\[<-].*?)?`", readme_cli_section()):
        assert listed.strip() in commands, f"README lists {listed!r}, which is not a command"


def test_help_runs_without_heavy_imports():
    code = (
        "import sys; from repotune.cli import app; "
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'trl', 'peft') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = subprocess.run([sys.executable, "-m", "repotune.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for group in ("config", "db"):
        assert group in result.stdout
