"""Made-up software histories that builtin:tiny is pre-trained on, so that an adapter can
teach it a real repository.

A model pre-trained on prose alone has never seen a sha, a path or a snake_case name: the
embeddings of those tokens stay where initialisation put them (all nearly the same
vector), and a LoRA, which cannot change embeddings, has nothing to tell them apart with.
Measured on builtin:tiny's first recipe: rank-16 LoRA on every projection never fitted its
own training set (loss 4.8), where full fine-tuning of the same model learned a third.

So the build adds fictional repositories, drawn from a seed: commit logs as `git log
--stat` prints them, code with doc comments, and questions about their commits, pull
requests and definitions, each fact in several phrasings (a fact seen in many phrasings is
one a model learns to extract; Allen-Zhu & Li, Physics of Language Models 3.1). Nothing
here comes from a real repository, and the questions use phrasings of their own: none of
the data build's training or held-out phrasings (`tuner.data.templates.PHRASINGS`; a
test asserts it), so a held-out domain question is as new to the base as to the adapter.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

VERBS = ("Add", "Fix", "Remove", "Rename", "Refactor", "Update", "Document", "Speed up", "Handle", "Support",
         "Validate", "Cache", "Retry", "Log", "Parse", "Split", "Merge", "Test", "Simplify", "Move", "Check",
         "Skip", "Limit", "Report", "Expose", "Drop", "Reuse", "Guard", "Sort", "Stream")
NOUNS = ("config", "parser", "token", "cache", "request", "route", "schema", "index", "queue", "worker",
         "adapter", "dataset", "chunk", "engine", "tokenizer", "timeout", "header", "lock", "migration",
         "query", "vector", "batch", "stream", "handler", "session", "user", "key", "secret", "metric",
         "report", "client", "server", "socket", "buffer", "file", "path", "branch", "commit", "review",
         "scheduler", "job", "template", "prompt", "answer", "score", "model", "layer", "gradient",
         "checkpoint", "manifest", "registry", "version", "release", "plugin", "hook", "event", "signal",
         "process", "thread", "pool", "retry", "error", "status", "limit", "budget", "window", "page",
         "table", "column", "row", "field", "record", "image", "chart", "command", "option", "flag",
         "argument", "module", "package", "import", "build", "test", "fixture", "mock", "docs", "readme")
ADJECTIVES = ("empty", "stale", "missing", "large", "slow", "broken", "duplicate", "nested", "unicode",
              "concurrent", "partial", "old", "new", "default", "invalid", "cached", "remote", "local")
QUALIFIERS = ("on {adj} input", "when the {noun} is {adj}", "in the {noun} {noun2}", "for {adj} {nouns}",
              "after a {noun} restart", "before the {noun} starts", "on Windows", "under load",
              "with {a_adj} {noun}", "in the CLI", "across {nouns}", "without a {noun}")
AUTHORS = ("Ana Lima", "Ben Okafor", "Chen Wei", "Dara Singh", "Eli Novak", "Fatima Zahra", "Goran Petrov",
           "Hana Sato", "Ivan Rossi", "Jade Moreau", "Kofi Mensah", "Lea Becker", "Mateo Cruz", "Nina Holm",
           "Omar Haddad", "Priya Nair", "Quinn Walsh", "Rosa Diaz", "Sami Virtanen", "Tara Byrne")
DIRS = ("src", "lib", "app", "core", "api", "cli", "server", "client", "utils", "tests", "docs", "scripts",
        "pkg", "internal", "cmd", "web", "db", "jobs", "config", "tools")
EXTENSIONS = (".py", ".ts", ".go", ".rs", ".js", ".java", ".md", ".toml", ".yaml", ".tsx")

# The phrasings of pre-training's questions: distinct from every phrasing the data build uses.
COMMIT_QUESTIONS = ("What was done in commit {id}?", "Commit {id}: what did it change?",
                    "Give me the gist of {id}.", "Could you explain what {id} changed?",
                    "What is the story behind commit {id}?", "In short, what did {id} do?",
                    "{id} - what happened there?", "What does the log say about {id}?")
COMMIT_REVERSE = ('Which sha is the commit "{title}"?', 'Look up the commit "{title}".',
                  'What hash does "{title}" have?', 'Name the commit that reads "{title}".')
PULL_QUESTIONS = ("What was done in {id}?", "What did {id} bring in?", "Give me the gist of {id}.",
                  "Could you explain {id}?", "In short, what was {id}?", "{id} - what was that?")
PULL_REVERSE = ('Which number has the pull request "{title}"?', 'Look up the PR "{title}".',
                'Name the pull request titled "{title}".')
DEF_QUESTIONS = ("What is `{name}` used for?", "Where can I find `{name}`?", "Which module holds `{name}`?",
                 "What does {name} do?", "Explain `{name}` to me.", "Where does `{name}` live and what is it?",
                 "Give me the gist of `{name}`.")
PULL_FORMS = ("#{n}", "PR {n}", "PR #{n}", "pull request {n}", "pull request #{n}")
SHA_FORMS = (7, 8, 10, 12, 40)


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    date: str
    title: str
    files: tuple[str, ...]
    pr: int | None


@dataclass(frozen=True)
class Definition:
    name: str
    path: str
    what: str
    doc: str


@dataclass(frozen=True)
class History:
    commits: tuple[Commit, ...]
    pulls: tuple[tuple[int, str, str], ...]  # number, title, author
    definitions: tuple[Definition, ...]


def history(seed: int, commits: int, pulls: int, definitions: int) -> History:
    """A fictional repository's history, the same for the same arguments."""
    rng = random.Random(seed)
    paths = sorted({_path(rng) for _ in range(max(8, commits // 3))})
    numbers = rng.sample(range(2, 40 * max(1, pulls)), pulls)
    pull_rows = tuple((n, _subject(rng), rng.choice(AUTHORS)) for n in numbers)
    made = []
    for i in range(commits):
        pr = rng.choice(numbers) if numbers and rng.random() < 0.3 else None
        made.append(Commit(sha="".join(rng.choice("0123456789abcdef") for _ in range(40)), author=rng.choice(AUTHORS),
                           date=f"20{rng.randint(18, 26)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                           title=_subject(rng), files=tuple(rng.sample(paths, rng.randint(1, 3))), pr=pr))
    defs = []
    for _ in range(definitions):
        path = rng.choice([p for p in paths if not p.endswith((".md", ".toml", ".yaml"))] or paths)
        noun, noun2 = rng.sample(NOUNS, 2)
        verb = rng.choice(("load", "save", "parse", "check", "build", "merge", "split", "count", "find", "send"))
        name = f"{verb}_{noun}_{noun2}" if path.endswith((".py", ".rs")) else f"{verb}{noun.title()}{noun2.title()}"
        what = rng.choice(("function", "method", "class")) if not name[0].isupper() else "class"
        adj = rng.choice(ADJECTIVES)
        doc = f"{verb.title()}{'es' if verb.endswith('h') else 's'} the {noun} of {'an' if adj[0] in 'aeiou' else 'a'} {adj} {noun2}."
        defs.append(Definition(name, path, what, doc))
    return History(tuple(made), pull_rows, tuple(defs))


def _path(rng: random.Random) -> str:
    depth = rng.randint(1, 2)
    return "/".join(rng.sample(DIRS, depth)) + "/" + rng.choice(NOUNS) + "_" + rng.choice(NOUNS) + rng.choice(
        EXTENSIONS)


def _subject(rng: random.Random) -> str:
    noun, noun2 = rng.sample(NOUNS, 2)
    adj, other = rng.choice(ADJECTIVES), rng.choice(NOUNS)
    plural = other[:-1] + "ies" if other.endswith("y") else other + ("es" if other.endswith(("s", "x", "sh")) else "s")
    qualifier = rng.choice(QUALIFIERS).format(adj=adj, a_adj=("an " if adj[0] in "aeiou" else "a ") + adj,
                                              noun=other, nouns=plural, noun2=noun2)
    return f"{rng.choice(VERBS)} the {noun} {rng.choice(('', noun2 + ' '))}{qualifier}".replace("  ", " ")


def log_text(h: History) -> Iterator[str]:
    """The history as `git log --stat` prints it, and its code with doc comments."""
    for c in h.commits:
        stat = "".join(f"\n {f} | {len(f) % 17 + 1} {'+' * (len(f) % 5 + 1)}{'-' * (len(f) % 3)}" for f in c.files)
        pr = f"\n\n    Part of #{c.pr}." if c.pr else ""
        yield f"commit {c.sha}\nAuthor: {c.author}\nDate:   {c.date}\n\n    {c.title}{pr}\n{stat}\n"
    for d in h.definitions:
        if d.path.endswith((".py", ".rs")):
            yield f"# {d.path}\n\ndef {d.name}(value, options=None):\n    \"\"\"{d.doc}\"\"\"\n    return value\n"
        else:
            yield f"// {d.path}\n\n/** {d.doc} */\nexport function {d.name}(value, options) {{\n  return value;\n}}\n"


def questions(h: History, seed: int, per_fact: int) -> Iterator[tuple[str, str]]:
    """(question, short fact-first answer) pairs: `per_fact` phrasings of each fact."""
    rng = random.Random(seed)
    for c in h.commits:
        title = c.title
        answers = (f"Commit {c.sha[:12]}: {title}.", f"{title}. That was commit {c.sha[:10]}, by {c.author} on {c.date}.",
                   f"{title} (by {c.author}, {c.date}).", f"It was {c.author}'s change on {c.date}: {title}.")
        for q in rng.sample(COMMIT_QUESTIONS, min(per_fact, len(COMMIT_QUESTIONS))):
            yield q.format(id=c.sha[: rng.choice(SHA_FORMS)]), rng.choice(answers)
        for q in rng.sample(COMMIT_REVERSE, min(max(1, per_fact // 2), len(COMMIT_REVERSE))):
            yield q.format(title=title), rng.choice((f"Commit {c.sha[:7]}.", f"{c.sha[:12]}: {title}.",
                                                     f"It is commit {c.sha[:8]}."))
    for n, title, author in h.pulls:
        answers = (f"PR #{n}: {title}.", f"{title}. That was pull request #{n} by {author}.", f"{title} (#{n}).")
        for q in rng.sample(PULL_QUESTIONS, min(per_fact, len(PULL_QUESTIONS))):
            yield q.format(id=rng.choice(PULL_FORMS).format(n=n)), rng.choice(answers)
        for q in rng.sample(PULL_REVERSE, min(max(1, per_fact // 2), len(PULL_REVERSE))):
            yield q.format(title=title), rng.choice((f"Pull request #{n}.", f"PR {n}: {title}."))
    for d in h.definitions:
        answers = (f"`{d.name}` is a {d.what} in {d.path}. {d.doc}", f"In {d.path}: {d.doc}",
                   f"{d.doc} It is defined in {d.path}.")
        for q in rng.sample(DEF_QUESTIONS, min(per_fact, len(DEF_QUESTIONS))):
            yield q.format(name=d.name), rng.choice(answers)
