"""Ingest of a long history against `git log -p` over the same history, in one run.

A repository is generated with `git fast-import`: 10,000 commits on Python files whose
diffs look like real changes (functions added, edited and removed, new modules), 1,000
of them merge commits of pull requests ("Merge pull request #N from …", each merging a
branch of a few commits), and secrets planted in some of them (AWS keys, GitHub tokens,
passwords in URLs, private keys, `.env` files). Then, in one run and on the same
repository:

- `git log -p` over the default branch, output discarded: the reference;
- a full ingest into an empty store (every source, secret scanning and chunking
  included, one worker process per core), timed, and its diff MB scanned per second;
  three such pairs (reference, then ingest), the ratio being the median pair's, with
  the CPU time the hypervisor took from the machine during each ingest (steal);
- a rerun with nothing new, through the CLI, as a user runs it (five times: the median
  and the slowest);
- the planted secrets searched for in every stored text: the count found must be 0.

    python -m benchmarks.ingest_history [--commits 10000] [--prs 1000] [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("user", "order", "cache", "token", "path", "config", "item", "record", "session", "queue", "batch",
         "index", "value", "result", "event", "client", "server", "request", "response", "payload", "field")


def _name(rng: random.Random) -> str:
    return "_".join(rng.sample(WORDS, 2))


def _function(rng: random.Random) -> str:
    name, arg, other = _name(rng), rng.choice(WORDS), rng.choice(WORDS)
    body = [
        f"def {name}({arg}, {other}=None):",
        f'    """Return the {arg} for {other}, or None when there is none."""',
        f"    if {other} is None:",
        f"        {other} = {{}}",
        f"    found = [x for x in {arg} if x.get('{other}') == {other}]",
    ]
    for _ in range(rng.randint(1, 6)):
        body.append(f"    found = sorted(found, key=lambda x: x.get('{rng.choice(WORDS)}', 0))")
    body.append("    return found[0] if found else None")
    return "\n".join(body) + "\n"


def _secret(rng: random.Random, kind: str) -> tuple[str, str, str]:
    """(path, content, the secret itself) of a planted secret of `kind`."""
    def rand(chars: str, n: int) -> str:
        return "".join(rng.choice(chars) for _ in range(n))

    upper, alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    if kind == "aws":
        key = "AKIA" + rand(upper, 16)
        return f"deploy/aws_{rand('abcdef', 6)}.py", f'AWS_ACCESS_KEY_ID = "{key}"\n', key
    if kind == "github":
        token = "ghp_" + rand(alnum, 36)
        return f"scripts/release_{rand('abcdef', 6)}.sh", f"export GH_TOKEN={token}\n", token
    if kind == "url":
        password = rand(alnum, 18)
        return (f"config/db_{rand('abcdef', 6)}.py",
                f'DATABASE_URL = "postgresql://app:{password}@db.internal:5432/app"\n', password)
    if kind == "key":
        body = "MIIE" + rand(alnum + "+/", 60)
        pem = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n{rand(alnum, 64)}\n-----END RSA PRIVATE KEY-----\n"
        return f"docs/old_key_{rand('abcdef', 6)}.txt", "The key we used before:\n" + pem, body
    value = rand(alnum, 24)
    return ".env", f"SERVICE_PASSWORD={value}\n", value


class History:
    """Writes a fast-import stream while keeping the files' content in memory."""

    def __init__(self, rng: random.Random, out):
        self.rng, self.out = rng, out
        self.files: dict[str, list[str]] = {}
        self.mark = 0
        self.time = 1_700_000_000
        self.secrets: list[str] = []

    def blob_commit(self, ref: str, message: str, changes: dict[str, str | None], parents: list[int]) -> int:
        self.mark += 1
        self.time += self.rng.randint(60, 7200)
        author = self.rng.choice(["Ada Lovelace <ada@example.com>", "Alan Turing <alan@example.com>",
                                  "Grace Hopper <grace@example.com>"])
        data = message.encode()
        lines = [f"commit {ref}", f"mark :{self.mark}", f"author {author} {self.time} +0000",
                 f"committer {author} {self.time} +0000", f"data {len(data)}"]
        self.out.write(("\n".join(lines) + "\n").encode() + data + b"\n")
        if parents:
            self.out.write(f"from :{parents[0]}\n".encode())
            for p in parents[1:]:
                self.out.write(f"merge :{p}\n".encode())
        for path, content in changes.items():
            if content is None:
                self.out.write(f"D {path}\n".encode())
            else:
                raw = content.encode()
                self.out.write(f"M 100644 inline {path}\ndata {len(raw)}\n".encode() + raw + b"\n")
        self.out.write(b"\n")
        return self.mark

    def change(self, plant: str | None = None) -> tuple[str, dict[str, str | None]]:
        rng = self.rng
        if plant:
            path, content, secret = _secret(rng, plant)
            self.secrets.append(secret)
            return f"Update {path.split('/')[-1]}", {path: content}
        if len(self.files) < 50 or rng.random() < 0.05:
            path = f"src/{rng.choice(WORDS)}/{_name(rng)}.py"
            self.files[path] = [_function(rng) for _ in range(rng.randint(2, 6))]
            return f"Add {path}", {path: "\n\n".join(self.files[path])}
        path = rng.choice(sorted(self.files))
        funcs = self.files[path]
        action = rng.random()
        if action < 0.4:
            funcs.append(_function(rng))
            message = f"Add a helper to {path}"
        elif action < 0.8 or len(funcs) < 3:
            i = rng.randrange(len(funcs))
            lines = funcs[i].splitlines()
            lines.insert(-1, f"    # {rng.choice(WORDS)}: keep {rng.choice(WORDS)} ordered")
            funcs[i] = "\n".join(lines) + "\n"
            message = f"Fix ordering in {path}"
        else:
            funcs.pop(rng.randrange(len(funcs)))
            message = f"Remove an unused function from {path}"
        return message, {path: "\n\n".join(funcs)}


def generate(root: Path, commits: int, prs: int, secrets: int, seed: int = 0) -> tuple[Path, list[str]]:
    repo = root / "history"
    shutil.rmtree(repo, ignore_errors=True)  # fast-import would not move an existing branch to another history
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    rng = random.Random(seed)
    proc = subprocess.Popen(["git", "-C", str(repo), "fast-import", "--quiet"], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    history = History(rng, proc.stdin)
    kinds = ["aws", "github", "url", "key", "env"]
    plant_at = {rng.randrange(commits): kinds[i % len(kinds)] for i in range(secrets)}
    pr_every = commits // prs
    head, made, number = 0, 0, 0
    while made < commits:
        if number < prs and made >= number * pr_every + 1:  # the last one too has room for its branch
            number += 1
            branch, tip = f"refs/heads/pr-{number}", head
            merged: dict[str, str | None] = {}
            for _ in range(rng.randint(1, 3)):
                if made >= commits - 1:
                    break
                message, changes = history.change(plant_at.get(made))
                tip = history.blob_commit(branch, message, changes, [tip] if tip else [])
                merged.update(changes)
                made += 1
            title = f"Merge pull request #{number} from dev/feature-{number}\n\nFeature {number}"
            # fast-import starts a merge from its first parent's tree: the branch's changes are
            # written again, so that the merge's tree is the branch's (as `git merge` leaves it)
            head = history.blob_commit("refs/heads/main", title, merged, [head, tip])
            history.out.write(f"reset {branch}\nfrom 0000000000000000000000000000000000000000\n\n".encode())
        else:
            message, changes = history.change(plant_at.get(made))
            head = history.blob_commit("refs/heads/main", message, changes, [head] if head else [])
        made += 1
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-f", "main"], check=True)
    return repo, history.secrets


def timed(cmd: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - start


def steal() -> float:
    """Seconds of CPU the hypervisor has taken from this machine's cores so far (all cores
    together; /proc/stat's steal column). On a shared host it grows when both cores are
    busy, so it weighs on the two-core ingest and hardly on the one-core reference."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--prs", type=int, default=1_000)
    parser.add_argument("--secrets", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3, help="full ingests, each paired with git log -p")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="repotune-ingest-"))
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    repo, planted = generate(root, args.commits, args.prs, args.secrets)
    print(f"generated {args.commits:,} commits ({args.prs:,} merged PRs) in {time.perf_counter() - start:.1f} s")
    git_log = subprocess.run(["git", "-C", str(repo), "log", "-p", "main"], capture_output=True).stdout
    config = root / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "{root / "state"}"\n[ingest]\nrepo = "{repo}"\n')
    cli = [sys.executable, "-m", "repotune.cli", "ingest", "--config", str(config), "--json"]
    # This machine drifts by tens of percent over a minute: each full ingest is paired with
    # a `git log -p` run just before it, on an empty store, and the ratio is their median.
    pairs, stolen_s = [], []
    for _ in range(args.runs):
        shutil.rmtree(root / "state", ignore_errors=True)
        # The reference is short (about a second), so it is the median of three runs.
        reference = sorted(timed(["git", "-C", str(repo), "log", "-p", "main"]) for _ in range(3))[1]
        start, stolen = time.perf_counter(), steal()
        first = json.loads(subprocess.run([*cli, "--full"], check=True, capture_output=True, text=True).stdout)
        pairs.append((time.perf_counter() - start, reference))
        stolen_s.append(steal() - stolen)
    ratios = sorted(full / reference for full, reference in pairs)
    full, reference = sorted(pairs, key=lambda p: p[0] / p[1])[len(pairs) // 2]
    reruns = sorted(timed(cli) for _ in range(5))
    again = json.loads(subprocess.run(cli, check=True, capture_output=True, text=True).stdout)
    import sqlite3

    db = sqlite3.connect(root / "state" / "repotune.db")
    scanned = db.execute("select sum(length(diff)) from commits").fetchone()[0]
    texts = [r[0] for t, c in (("commits", "diff"), ("commits", "message"), ("documents", "text"), ("chunks", "text"))
             for r in db.execute(f"select {c} from {t}")]
    found = sum(1 for s in planted for t in texts if s in t)
    row = {
        "commits": args.commits, "prs": args.prs, "git_log_p_s": reference, "git_log_p_mb": len(git_log) / 1e6,
        "ingest_s": full, "ratio": full / reference, "ratios": ratios, "runs": pairs,
        "steal_s": stolen_s, "diff_mb_scanned": scanned / 1e6,
        "mb_per_s": scanned / 1e6 / full,
        "rerun_s": reruns[2], "rerun_max_s": reruns[-1], "reruns_s": reruns, "planted": len(planted), "found": found,
        "stored_commits": first["sources"]["git"]["items"], "redactions": first["redactions"],
        "rerun_items": {k: v.get("items") for k, v in again["sources"].items()},
    }
    print(json.dumps(row, indent=2))
    if args.out:
        args.out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
