"""Template Q&A: questions about commits, pull requests, files and docs, answered from the
store with no LLM. Several phrasings per kind, chosen by the seed; the held-out eval
questions use phrasings training never sees, so the domain eval is not recall of the
exact training string."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from tuner.data.examples import Example, chat, pick
from tuner.data.items import CommitItem, DocItem, Items, PullItem

MAX_ANSWER_CHARS = 6000  # a longer file or page is cut, and says so
MAX_FILES_LISTED = 20

# Per kind: the phrasings training uses, and the ones only the held-out eval uses.
PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "commit": (("What changed in commit {short} and why?", "Explain commit {short}.",
                "What did commit {short} ({title}) change, and for what reason?", "Tell me about commit {short}."),
               ("Summarize the change made in {short}.", "Describe what {short} did.")),
    "pull_request": (("What did pull request #{n} do?", "What was pull request #{n} ({title}) about?",
                      "Explain PR #{n}.", "Summarize pull request #{n}."),
                     ("Describe PR #{n} ({title}).", "What is #{n} in this repository's pull requests?")),
    "review": (("What did the review of pull request #{n} say?", "What feedback did PR #{n} get in review?",
                "What did reviewers ask for on #{n}?"),
               ("Summarize the review comments on PR #{n}.",)),
    "after_review": (("What was changed in pull request #{n} after review?",
                      "What changed in PR #{n} once it had been reviewed?",
                      "Which commits did pull request #{n} get after its first review?"),
                     ("After the review of #{n}, what was changed?",)),
    "file": (("What does {path} contain?", "What is in {path}?", "Give me an overview of {path}."),
             ("Describe the file {path}.",)),
    "show": (("As of {date}, show {path}.", "Show me {path} as it was on {date}.",
              "Print the contents of {path} ({date})."),
             ()),  # the whole file: not asked in the eval
    "definition": (("What does `{name}` in {path} do?", "Explain the {what} `{name}` defined in {path}.",
                    "How is `{name}` implemented in {path}?"),
                   ("Describe {what} `{name}` from {path}.",)),
    "doc": (("What does the page {title} ({path}) say?", "Summarize the documentation page {path}.",
             "What is documented in {path}?"),
            ("Tell me what {path} documents.",)),
    "section": (('In {path}, what does the section "{heading}" say?', 'What does {path} say under "{heading}"?'),
                ('Explain the "{heading}" part of {path}.',)),
}


@dataclass
class Made:
    """A template's training examples and its held-out eval examples."""

    train: list[Example]
    eval: list[Example]

    def add(self, other: Made) -> None:
        self.train += other.train
        self.eval += other.eval


def generate(items: Items, seed: int, cursor: int) -> Iterator[Made]:
    """One `Made` per item, in store order."""
    for commit in items.commits():
        yield _commit(commit, seed, commit.chunks.newest > cursor)
    for pull in items.pull_requests():
        yield _pull(pull, seed, pull.chunks.newest > cursor)
    for doc in items.documents():
        yield _document(doc, seed, doc.chunks.newest > cursor)


def _made(kind: str, seed: int, key: tuple[object, ...], values: Mapping[str, object], answer: str,
          sources: dict[str, object], new: bool) -> Made:
    """`answer` asked in one of `kind`'s training phrasings and one of its eval phrasings, chosen by `key`."""
    train, held_out = PHRASINGS[kind]
    def example(phrasings: tuple[str, ...]) -> Example:
        return Example(chat(pick(phrasings, seed, *key).format(**values), answer), "templates", kind, sources, new)

    return Made([example(train)], [example(held_out)] if held_out else [])


def _commit(c: CommitItem, seed: int, new: bool) -> Made:
    short = c.sha[:12]
    stats = f"{len(c.files)} file{'s' if len(c.files) != 1 else ''}, +{c.insertions} -{c.deletions}"
    files = "".join(f"\n- {f.path} ({_status(f.status)}" + (f", +{f.insertions} -{f.deletions})"
                                                               if f.insertions is not None else ")")
                    for f in c.files[:MAX_FILES_LISTED])
    more = f"\n- and {len(c.files) - MAX_FILES_LISTED} more" if len(c.files) > MAX_FILES_LISTED else ""
    why = f"\n\n{c.body}" if c.body else ""
    pr = f" It was part of pull request #{c.pr_number}." if c.pr_number else ""
    answer = (f"Commit {short}, by {c.author} on {c.date[:10]}: {c.title}{why}\n\n"
              f"It changed {stats}:{files}{more}{pr}" if c.files else
              f"Commit {short}, by {c.author} on {c.date[:10]}: {c.title}{why}\n\nIt changed no files.{pr}")
    values = {"short": short, "title": c.title}
    return _made("commit", seed, (c.sha,), values, answer, {"commit": c.sha, "chunks": c.chunks.ids}, new)


def _status(letter: str) -> str:
    return {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied", "T": "type changed"}.get(
        letter[:1], letter)


def _pull(p: PullItem, seed: int, new: bool) -> Made:
    values = {"n": p.number, "title": p.title}
    sources = {"pr": p.number, "chunks": p.chunks.ids}
    state = f"merged on {p.merged_at[:10]}" if p.merged_at else p.state
    by = f" by {p.author}" if p.author else ""
    into = f" from {p.head} into {p.base}" if p.head and p.base else ""
    body = f"\n\n{p.body.strip()}" if p.body.strip() else ""
    files = "".join(f"\n- {f['path']} (+{f.get('additions') or 0} -{f.get('deletions') or 0})"
                    for f in p.files[:MAX_FILES_LISTED])
    answer = f"Pull request #{p.number}, \"{p.title}\"{by}{into}, {state}.{body}"
    if files:
        answer += f"\n\nFiles changed:{files}"
    made = _made("pull_request", seed, (p.number,), values, answer, sources, new)
    said = [c for c in p.comments if c.body.strip() or c.state]
    if said:
        lines = []
        for c in said:
            who = c.author or "someone"
            where = f" on {c.path}" if c.path else ""
            verdict = f" ({c.state.lower().replace('_', ' ')})" if c.state else ""
            what = {"review": "reviewed", "review_comment": "commented"}.get(c.kind, "wrote")
            lines.append(f"- {who} {what}{where}{verdict}" + (f": {c.body.strip()}" if c.body.strip() else ""))
        review = _cut(f"The review of pull request #{p.number} (\"{p.title}\"):\n" + "\n".join(lines))
        made.add(_made("review", seed, (p.number,), values, review, sources, new))
    after = _after_review(p)
    if after:
        made.add(_made("after_review", seed, (p.number,), values, after, sources, new))
    return made


def _after_review(p: PullItem) -> str:
    """What the merged branch got after the first review, when both are known."""
    reviews = [c for c in p.comments if c.kind in ("review", "review_comment") and c.created_at]
    if p.branch is None or not reviews:
        return ""
    first = min(reviews, key=lambda c: _when(c.created_at or ""))
    when = _when(first.created_at or "")
    later = [c for c in p.branch if _when(c.date) > when]
    by = f"{first.author or 'a reviewer'} on {(first.created_at or '')[:10]}"
    if not later:
        return (f"Nothing: no commit was added to pull request #{p.number} after its first review ({by}); "
                "it was merged as reviewed.")
    listed = "".join(f"\n- {c.sha[:12]} {c.title} ({c.files} file{'s' if c.files != 1 else ''})" for c in later)
    return (f"After its first review ({by}), pull request #{p.number} got {len(later)} more "
            f"commit{'s' if len(later) != 1 else ''} before it was merged:{listed}")


def _when(stamp: str) -> datetime:
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _document(d: DocItem, seed: int, new: bool) -> Made:
    sources: dict[str, object] = {"path": f"{d.path}@{d.sha}", "chunks": d.chunks.ids}
    if d.kind == "file":
        return _file(d, seed, new, sources)
    return _page(d, seed, new, sources)


def _file(d: DocItem, seed: int, new: bool, sources: dict[str, object]) -> Made:
    lines = d.text.splitlines()
    tree = _parse(d.text) if d.path.endswith(".py") else None
    defs = _definitions(tree, lines) if tree else []
    date = d.date[:10]
    as_of = f" as of {date}" if date else ""
    overview = f"{d.path}{as_of} has {len(lines)} line{'s' if len(lines) != 1 else ''}."
    if defs:
        named = (f"{what} `{name}` (line {line})" for name, what, line, _, _ in defs)
        overview += " It defines " + ", ".join(named) + "."
    doc = (ast.get_docstring(tree) or "").strip() if tree else ""
    if doc:
        overview += f"\n\n{doc}"
    if not defs and not doc:
        overview += f" It begins:\n\n```\n{_head(lines)}\n```"
    values = {"path": d.path, "date": date or "the current head"}
    made = _made("file", seed, (d.path,), values, overview, sources, new)
    made.add(_made("show", seed, (d.path,), values, _cut(f"```\n{d.text.rstrip()}\n```"), sources, new))
    for name, what, line, docstring, code in defs:
        values = {"path": d.path, "name": name, "what": what}
        doc_line = f" {docstring}" if docstring else " It has no docstring."
        answer = _cut(f"`{name}` is a {what} in {d.path}, line {line}.{doc_line}\n\n```python\n{code}\n```")
        made.add(_made("definition", seed, (d.path, name), values, answer, {**sources, "chunks": d.chunks.at(line)},
                       new))
    return made


def _page(d: DocItem, seed: int, new: bool, sources: dict[str, object]) -> Made:
    from ingest.chunks import section_units

    sections = section_units(d.text)
    title = next((s.title for s in sections if s.title), d.path)
    values = {"path": d.path, "title": title}
    made = _made("doc", seed, (d.path,), values, _cut(d.text.strip()), sources, new)
    headed = [s for s in sections if s.title and s.text.strip().count("\n") >= 1]
    if len(headed) > 1:
        for s in headed:
            values = {"path": d.path, "heading": s.title}
            made.add(_made("section", seed, (d.path, s.title), values, _cut(s.text.strip()), sources, new))
    return made


def _parse(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def _definitions(tree: ast.Module, lines: list[str]) -> list[tuple[str, str, int, str, str]]:
    """(name, "function" or "class", line, first paragraph of its docstring, source) of each
    top-level definition of a Python module."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            code = "\n".join(lines[first - 1: node.end_lineno])
            doc = (ast.get_docstring(node) or "").split("\n\n", 1)[0].strip()
            out.append((node.name, "class" if isinstance(node, ast.ClassDef) else "function", first, doc, code))
    return out


def _head(lines: list[str], n: int = 15) -> str:
    return "\n".join(lines[:n]) + ("\n…" if len(lines) > n else "")


def _cut(text: str) -> str:
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    cut = text[:MAX_ANSWER_CHARS].rsplit("\n", 1)[0] + "\n…"
    if cut.count("```") % 2:
        cut += "\n```"  # close the code block the cut fell in
    return cut + "\n(cut here: the rest is longer than an answer)"
