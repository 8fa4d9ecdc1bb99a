"""Real git repositories made with the git CLI, and settings that point ingest at them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from repotune import config as cfg

# Planted secrets: each must be found and none may reach the store. Built from pieces so
# that this file itself carries none.
AWS_KEY = "AKIA" + "QX7TZ3VB9WLM2PKD"
GITHUB_TOKEN = "ghp_" + "R8mKq2Lx7Vn4Tz9Wb3Yc6Hd1Jf5Gs0Pa8UeQ"
URL_PASSWORD = "s3cr3t-" + "Pa55w0rd-91x"
PRIVATE_KEY_BODY = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun"
PRIVATE_KEY = (
    "-----BEGIN RSA " + "PRIVATE KEY-----\n" + PRIVATE_KEY_BODY + "\n"
    "VaLuzgTJDFWKnPCPB6LCUsrkE2nD0Kk8LztzzXBdTqMhgOB1Z1Z8J5dnmrvnbXqj\n" + "-----END RSA " + "PRIVATE KEY-----\n"
)
ENV_VALUE = "dotenv-" + "Zq81mXr4Lp02"
PLANTED = [AWS_KEY, GITHUB_TOKEN, URL_PASSWORD, PRIVATE_KEY_BODY, ENV_VALUE]


class GitRepo:
    def __init__(self, path: Path, branch: str = "main"):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", branch)
        self.git("config", "user.name", "Ada Lovelace")
        self.git("config", "user.email", "ada@example.com")
        self.git("config", "commit.gpgsign", "false")
        self.tick = 0

    def git(self, *args: str) -> str:
        self.tick = getattr(self, "tick", 0) + 1
        date = f"2026-01-01T00:{self.tick // 60 % 60:02d}:{self.tick % 60:02d}+00:00"
        env = {**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        return subprocess.run(
            ["git", "-C", str(self.path), *args], check=True, capture_output=True, text=True, env=env
        ).stdout.strip()

    def write(self, files: dict[str, str | bytes]) -> None:
        for name, content in files.items():
            file = self.path / name
            file.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                file.write_bytes(content)
            else:
                file.write_text(content)

    def commit(self, message: str, files: dict[str, str | bytes] | None = None) -> str:
        self.write(files or {})
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def settings_for(tmp_path: Path, clean_env: pytest.MonkeyPatch):
    """settings_for(repo, **ingest) -> Settings with the store under tmp_path."""

    def make(repo: Path | str, **ingest: object) -> cfg.Settings:
        raw = {"paths": {"data_dir": str(tmp_path / "state")}, "ingest": {"repo": str(repo), **ingest}}
        return cfg.Settings(config=cfg.parse(raw), source=None, root=tmp_path, secrets=cfg.Secrets())

    return make


@pytest.fixture
def history(tmp_path: Path) -> GitRepo:
    """A small project: code, docs, a rename, a binary, a merged PR, a squash, and planted secrets."""
    repo = GitRepo(tmp_path / "project")
    repo.commit("Start the calculator", {
        "calc.py": 'def add(a, b):\n    """Add two numbers."""\n    return a + b\n\n\nclass Calculator:\n'
                   '    def total(self, xs):\n        return sum(xs)\n',
        "README.md": "# Calculator\n\nAdds numbers.\n\n## Usage\n\nCall add(a, b).\n",
    })
    repo.commit("Add the logo and settings", {
        "logo.png": bytes(range(256)) * 8,
        "settings.py": f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"\nDATABASE = "postgres://app:{URL_PASSWORD}@db.local/app"\n',
    })
    repo.git("mv", "calc.py", "calculator.py")
    repo.commit("Rename calc to calculator")
    repo.git("checkout", "-q", "-b", "feature/mul")
    repo.commit("Add multiply", {"calculator.py": (repo.path / "calculator.py").read_text()
                                 + "\n\ndef mul(a, b):\n    return a * b\n"})
    repo.commit("Deploy key for CI", {"deploy/id_rsa": PRIVATE_KEY, "deploy/notes.md": "token " + GITHUB_TOKEN + "\n",
                                      "deploy/key.txt": "The old key:\n" + PRIVATE_KEY})
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--no-ff", "feature/mul", "-m", "Merge pull request #7 from ada/feature/mul\n\nMultiply")
    repo.commit("Document subtraction (#9)", {"docs/usage.md": "# Usage\n\n## Subtract\n\nNot yet.\n",
                                              ".env": f"SECRET={ENV_VALUE}\n"})
    repo.git("checkout", "-q", "-b", "wip")
    repo.commit("Unmerged experiment", {"wip.py": "x = 1\n"})
    repo.git("checkout", "-q", "main")
    return repo
