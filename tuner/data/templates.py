"""Template Q&A: questions about commits, pull requests, files and docs, answered from the
store with no LLM.

A fact is learned only when seen in many phrasings (Allen-Zhu & Li, Physics of Language
Models 3.1), and a long templated answer makes the loss about the template. So commits,
pull requests, files (the names they define), definitions (where they live, what their
doc comment's first sentence says), doc pages and their sections (their title and first
words) are taught as short, fact-first answers in `paraphrases` phrasings, their ids in
the forms people paste (shas of 7, 8, 10, 12 and 40 characters; `#12`, `PR 12`), with
reverse questions (subject → sha, title → number); their long forms (file lists, bodies,
whole pages) go to raw text. The split is by phrasing, never by fact: each item gives
its training phrasings, one more training-pool phrasing that validation may take (a
trained fact in new words), and one held-out phrasing, from a pool training never uses,
for the domain eval, carrying the key facts a right answer holds (`eval.facts`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from eval.facts import content_words
from eval.scoring import tokens
from repotune.relevance import stem
from tuner.data import code
from tuner.data.examples import Example, chat, fraction, pick
from tuner.data.items import CommitItem, DocItem, Items, PullItem

MAX_ANSWER_CHARS = 6000  # a longer file or page is cut, and says so
MAX_FILES_LISTED = 20
MAX_NAMES_LISTED = 16  # a file's definitions named in its answers
LEAD_CHARS = 300  # a doc page's or section's short answers: its first words, at most this long

# Per kind: the phrasings training uses, and the ones only the held-out eval uses. Held-out
# phrasings never state the key facts (the eval asks for them).
PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "commit": (("What did commit {id} do?", "What is commit {id}?", "What changed in {id}?", "Explain commit {id}.",
                "Tell me about commit {id}.", "What was {id} about?", "Summarize commit {id}.",
                "What does {id} change?", "Why was commit {id} made?", "{id}: what is that commit?",
                "Which change is {id}?", "What is the subject of commit {id}?"),
               ("Describe what {id} did.", "Summarize the change made in {id}.",
                "I see {id} in the git log. What was it?", "Can you tell me what commit {id} was for?")),
    "commit_reverse": (('Which commit has the subject "{title}"?', 'What is the sha of the commit "{title}"?',
                        'Find the commit "{title}".', 'Which commit was "{title}"?',
                        'Give me the hash of the commit that says "{title}".', 'What is the commit id of "{title}"?',
                        'Look up the commit "{title}".', 'Which hash does the commit "{title}" have?',
                        'I need the sha for "{title}".', '"{title}": which commit is that?'),
                       ('What commit is "{title}"?', 'Which sha belongs to "{title}"?')),
    "pull_request": (("What did {id} do?", "What was {id} about?", "Explain {id}.", "Summarize {id}.",
                      "Tell me about {id}.", "What is {id}?", "What did {id} change?", "Why was {id} opened?"),
                     ("Describe {id}.", "What is {id} in this repository's pull requests?")),
    "pull_request_reverse": (('Which pull request was "{title}"?', 'What is the number of the pull request "{title}"?',
                              'Find the PR called "{title}".', 'Which PR is "{title}"?'),
                             ('What PR number is "{title}"?',)),
    "review": (("What did the review of pull request #{n} say?", "What feedback did PR #{n} get in review?",
                "What did reviewers ask for on #{n}?"),
               ("Summarize the review comments on PR #{n}.",)),
    "after_review": (("What was changed in pull request #{n} after review?",
                      "What changed in PR #{n} once it had been reviewed?",
                      "Which commits did pull request #{n} get after its first review?"),
                     ("After the review of #{n}, what was changed?",)),
    "file": (("What does {path} contain?", "What is in {path}?", "Give me an overview of {path}.",
              "What is defined in {path}?", "What's in the file {path}?", "Tell me about {path}.",
              "Summarize {path}.", "Which functions and classes does {path} have?", "What is {path} made of?",
              "What can I find in {path}?", "Walk me through {path}.", "What lives in {path}?",
              "Give me a summary of {path}.", "What are the contents of {path}?", "Explain what {path} holds.",
              "Which names does {path} define?", "What is {path} for?"),
             ("Describe the file {path}.",)),
    "show": (("As of {date}, show {path}.", "Show me {path} as it was on {date}.",
              "Print the contents of {path} ({date})."),
             ()),  # the whole file: not asked in the eval
    "definition": (("What does `{name}` in {path} do?", "Explain the {what} `{name}` defined in {path}.",
                    "What does the {what} `{name}` do?", "What is `{name}` for?", "Describe `{name}` from {path}.",
                    "What is `{name}`?", "Where is `{name}` defined?", "Which file defines `{name}`?",
                    "Tell me about `{name}`.", "What is the purpose of `{name}` in {path}?",
                    "Summarize what `{name}` does.", "In which file is the {what} `{name}`?",
                    "What is `{name}` in {path}?", "Tell me about `{name}` from {path}.",
                    "Summarize `{name}` in {path}.", "What does the {what} `{name}` in {path} do?",
                    "Explain `{name}` from {path}."),
                   ("Where is `{name}` defined, and what does it do?",
                    "I am looking at `{name}`: what is it, and where does it live?",
                    "what does {name} do and which file is it in")),
    # a name several files define: asked with its path, in words training never uses either
    "definition_in": ((), ("I am reading {path}: what does `{name}` there do?",
                           "in {path}, what is {name} for")),
    "code": (("How is `{name}` implemented in {path}?", "Show me the code of `{name}` in {path}."),
             ()),  # the code itself: not asked in the eval
    "doc": (("What does the page {title} ({path}) say?", "Summarize the documentation page {path}.",
             "What is documented in {path}?", "What is {path} about?", "What does {path} say?",
             "Give me the gist of {path}.", "What is the page {title} about?", "Summarize {path}.",
             "What does the doc {path} cover?", "Tell me about the page {path}.", "What does {path} describe?",
             "What is in the documentation page {title}?"),
            ("Tell me what {path} documents.",)),
    "section": (('In {path}, what does the section "{heading}" say?', 'What does {path} say under "{heading}"?',
                 'What is in the "{heading}" section of {path}?', 'Summarize the section "{heading}" of {path}.',
                 'What does the "{heading}" part of {path} cover?', '{path}, section "{heading}": what does it say?',
                 'Tell me about "{heading}" in {path}.', 'What is under the heading "{heading}" in {path}?',
                 'What does {path} explain in "{heading}"?'),
                ('Explain the "{heading}" part of {path}.',)),
}
SHA_FORMS = (7, 8, 10, 12, 40)  # how people paste a sha
PR_FORMS = ("#{n}", "PR {n}", "PR #{n}", "pull request {n}", "pull request #{n}")


@dataclass
class Made:
    """An item's training examples, the validation candidates (other phrasings of the same
    facts), its held-out eval examples, and its long forms as raw text."""

    train: list[Example]
    eval: list[Example]
    val: list[Example] = field(default_factory=list)
    raw: list[dict[str, object]] = field(default_factory=list)

    def add(self, other: Made) -> None:
        self.train += other.train
        self.eval += other.eval
        self.val += other.val
        self.raw += other.raw


def generate(items: Items, seed: int, cursor: int, paraphrases: int = 8,
             by_kind: Mapping[str, int] | None = None) -> Iterator[Made]:
    """One `Made` per item, in store order; each fact in `paraphrases` training phrasings, or in its
    kind's count in `by_kind` (commit, pull_request, file, definition, doc: a page and its sections)."""
    def count(kind: str) -> int:
        return (by_kind or {}).get(kind, paraphrases)

    for commit in items.commits():
        yield _commit(commit, seed, commit.chunks.newest > cursor, count("commit"))
    for pull in items.pull_requests():
        yield _pull(pull, seed, pull.chunks.newest > cursor, count("pull_request"))
    docs = list(items.documents())
    parsed = {d.path: code.parse(d.path, d.text) for d in docs if d.kind == "file"}
    files_of = Counter(name for p in parsed.values() if p for name in {x.name for x in p.definitions})
    shared = {name for name, n in files_of.items() if n > 1}
    for doc in docs:
        yield _document(doc, seed, doc.chunks.newest > cursor, (count("file"), count("definition"), count("doc")),
                        parsed.get(doc.path), shared)


def _made(kind: str, seed: int, key: tuple[object, ...], values: Mapping[str, object], answer: str,
          sources: dict[str, object], new: bool, facts: dict[str, object] | None = None) -> Made:
    """`answer` asked in one training phrasing (another one for validation) and one held-out phrasing."""
    train, held_out = PHRASINGS[kind]
    order = sorted(train, key=lambda q: fraction(seed, kind, *key, q))

    def example(question: str, key_facts: dict[str, object] | None = None) -> Example:
        return Example(chat(question.format(**values), answer), "templates", kind, sources, new, key_facts=key_facts)

    asks = held_out and _checkable(facts)
    return Made([example(order[0])], [example(pick(held_out, seed, *key), facts)] if asks else [],
                [example(order[1])] if len(order) > 1 else [])


def _phrased(kind: str, seed: int, key: tuple[object, ...], questions: list[str], held_out: list[str],
             answers: list[str], count: int, sources: dict[str, object], new: bool,
             facts: dict[str, object]) -> Made:
    """A fact in `count` training phrasings (distinct questions, the answers' forms in turn), one more
    training-pool question for validation, and one held-out question carrying its key facts."""
    questions = sorted(set(questions), key=lambda q: fraction(seed, kind, *key, q))
    first = pick(answers, seed, kind, *key)

    def example(question: str, answer: str, key_facts: dict[str, object] | None = None) -> Example:
        return Example(chat(question, answer), "templates", kind, sources, new, key_facts=key_facts)

    start = answers.index(first)
    train = [example(q, answers[(start + i) % len(answers)]) for i, q in enumerate(questions[:count])]
    val = [example(questions[count], first)] if len(questions) > count else []
    return Made(train, [example(pick(held_out, seed, "eval", *key), first, facts)] if _checkable(facts) else [],
                val)


def _asked(kind: str, values: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """A kind's training and held-out questions about one item."""
    train, held_out = PHRASINGS[kind]
    return [q.format(**values) for q in train], [q.format(**values) for q in held_out]


def _checkable(facts: Mapping[str, object] | None) -> bool:
    """A held-out question only where a right answer has something to show beyond what it asks: words,
    an exact string, a sha or a number to find (the share alone checks nothing)."""
    return any(value for name, value in (facts or {}).items() if name != "share")


def _ids(sha: str) -> list[str]:
    return [sha[:n] for n in SHA_FORMS]


def _commit(c: CommitItem, seed: int, new: bool, count: int) -> Made:
    train_q, held_q = PHRASINGS["commit"]
    title = c.title.rstrip(".")
    when, ids = c.date[:10], _ids(c.sha)
    sources: dict[str, object] = {"commit": c.sha, "chunks": c.chunks.ids, "date": c.date}
    why = _first_sentence(c.body)
    answers = [f"Commit {c.sha[:12]}: {title}.", f"{title}. That was commit {c.sha[:10]}, by {c.author} on {when}.",
               f"{title} (by {c.author}, {when}).", f"It was {c.author}'s change on {when}: {title}."]
    if why:
        answers.append(f"{title}. Why: {why}")
    if c.pr_number:
        answers.append(f"{title}; it came in with pull request #{c.pr_number}.")
    facts = {"words": _subject_words(title), "share": 2 / 3}
    made = _phrased("commit", seed, (c.sha,), [q.format(id=i) for q in train_q for i in ids],
                    [q.format(id=i) for q in held_q for i in ids], answers, count, sources, new, facts)
    reverse = [f"Commit {c.sha[:7]}.", f"That is {c.sha[:10]}, by {c.author} on {when}.", f"{c.sha[:12]}: {title}.",
               f"It is commit {c.sha[:8]}."]
    made.add(_phrased("commit_reverse", seed, (c.sha,), *_asked("commit_reverse", {"title": title}), reverse,
                      max(2, count // 2), sources, new, {"sha": c.sha}))
    made.raw.append({"kind": "commit", "text": _commit_long(c), "sources": sources, "new": new})
    return made


def _commit_long(c: CommitItem) -> str:
    """The commit's whole record: message, and the files it changed with their line counts."""
    stats = f"{len(c.files)} file{'s' if len(c.files) != 1 else ''}, +{c.insertions} -{c.deletions}"
    files = "".join(f"\n- {f.path} ({_status(f.status)}" + (f", +{f.insertions} -{f.deletions})"
                                                               if f.insertions is not None else ")")
                    for f in c.files[:MAX_FILES_LISTED])
    more = f"\n- and {len(c.files) - MAX_FILES_LISTED} more" if len(c.files) > MAX_FILES_LISTED else ""
    why = f"\n\n{c.body}" if c.body else ""
    pr = f" It was part of pull request #{c.pr_number}." if c.pr_number else ""
    return (f"Commit {c.sha[:12]}, by {c.author} on {c.date[:10]}: {c.title}{why}\n\n"
            f"It changed {stats}:{files}{more}{pr}" if c.files else
            f"Commit {c.sha[:12]}, by {c.author} on {c.date[:10]}: {c.title}{why}\n\nIt changed no files.{pr}")


def _subject_words(text: str) -> list[str]:
    return content_words(text, most=8)


def _words(text: str, share: float = 2 / 3) -> dict[str, object]:
    """Key facts: the first 8 content words of `text`, of which `share` are needed."""
    return {"words": _subject_words(text), "share": share}


def _first_sentence(text: str) -> str:
    first = text.strip().split("\n\n", 1)[0].replace("\n", " ").strip()
    cut = first.split(". ", 1)[0].strip()
    return (cut if cut.endswith(".") else cut + ".") if cut and len(cut) <= 200 else ""


def _status(letter: str) -> str:
    return {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied", "T": "type changed"}.get(
        letter[:1], letter)


def _pull(p: PullItem, seed: int, new: bool, count: int) -> Made:
    values = {"n": p.number, "title": p.title}
    sources = {"pr": p.number, "chunks": p.chunks.ids, "date": p.merged_at or ""}
    state = f"merged on {p.merged_at[:10]}" if p.merged_at else p.state
    by = f" by {p.author}" if p.author else ""
    into = f" from {p.head} into {p.base}" if p.head and p.base else ""
    body = f"\n\n{p.body.strip()}" if p.body.strip() else ""
    files = "".join(f"\n- {f['path']} (+{f.get('additions') or 0} -{f.get('deletions') or 0})"
                    for f in p.files[:MAX_FILES_LISTED])
    long = f"Pull request #{p.number}, \"{p.title}\"{by}{into}, {state}.{body}"
    if files:
        long += f"\n\nFiles changed:{files}"
    title = p.title.rstrip(".")
    why = _first_sentence(p.body)
    answers = [f"PR #{p.number}: {title}.", f"{title}. That was pull request #{p.number}{by}, {state}.",
               f"{title} (#{p.number}{by}).", f"Pull request #{p.number} was \"{title}\", {state}."]
    if why:
        answers.append(f"{title}. Why: {why}")
    ids = [f.format(n=p.number) for f in PR_FORMS]
    train_q, held_q = PHRASINGS["pull_request"]
    made = _phrased("pull_request", seed, (p.number,), [q.format(id=i) for q in train_q for i in ids],
                    [q.format(id=i) for q in held_q for i in ids], answers, count, sources, new,
                    {"words": _subject_words(title), "share": 2 / 3})
    reverse = [f"Pull request #{p.number}.", f"That is #{p.number}{by}, {state}.", f"PR {p.number}: {title}."]
    made.add(_phrased("pull_request_reverse", seed, (p.number,), *_asked("pull_request_reverse", {"title": title}),
                      reverse, max(2, count // 2), sources, new,
                      {"number": p.number}))
    made.raw.append({"kind": "pull_request", "text": long, "sources": sources, "new": new})
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
        made.add(_made("review", seed, (p.number,), values, review, sources, new,
                       _words(" ".join(c.body for c in said), share=0.5)))
    after = _after_review(p)
    if after:
        made.add(_made("after_review", seed, (p.number,), values, after, sources, new,
                       _words(after.split(":", 1)[-1], share=0.5)))
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


def _document(d: DocItem, seed: int, new: bool, count: tuple[int, int, int], parsed: code.Parsed | None,
              shared: Collection[str]) -> Made:
    sources: dict[str, object] = {"path": f"{d.path}@{d.sha}", "chunks": d.chunks.ids, "date": d.changed}
    if d.kind == "file":
        return _file(d, seed, new, sources, count[:2], parsed, shared)
    return _page(d, seed, new, sources, count[2])


def _file(d: DocItem, seed: int, new: bool, sources: dict[str, object], count: tuple[int, int],
          parsed: code.Parsed | None, shared: Collection[str]) -> Made:
    """What a file holds, as short answers in `count[0]` phrasings: the names it defines and the first
    sentence of its docstring (its first lines when it has neither); each definition on its own, in
    `count[1]` (`shared`: the names another file defines too); the whole file for "show"."""
    lines = d.text.splitlines()
    defs = parsed.definitions if parsed else []
    date = d.date[:10]
    doc = parsed.doc if parsed else ""
    summary = (_first_sentence(doc) or doc) if doc else ""
    if defs:
        names = [f"`{x.name}`" for x in defs[:MAX_NAMES_LISTED]]
        more = len(defs) - len(names)
        listed = ", ".join(names) + (f" and {more} more" if more else "")
        about = f" {summary}" if summary else ""
        answers = [f"{d.path} defines {listed}.{about}", f"It defines {listed}.{about}",
                   f"{summary} It defines {listed}." if summary else f"In {d.path}: {listed}."]
    elif doc:
        answers = [f"{d.path}: {summary}", summary]
    else:
        answers = [f"{d.path} begins:\n\n```\n{_head(lines, 8)}\n```"]  # short: asked in every phrasing
    values = {"path": d.path, "date": date or "the current head"}
    made = _phrased("file", seed, (d.path,), *_asked("file", values), answers, count[0], sources, new,
                    _file_facts(d.path, defs, doc, lines))
    made.add(_made("show", seed, (d.path,), values, _cut(f"```\n{d.text.rstrip()}\n```"), sources, new))
    for x in defs:
        made.add(_definition(d, x, parsed.language if parsed else "", seed, new, count[1],
                             {**sources, "chunks": d.chunks.at(x.line)}, x.name in shared))
    return made


def _definition(d: DocItem, x: code.Definition, fence: str, seed: int, new: bool, count: int,
                sources: dict[str, object], shared: bool) -> Made:
    """What a definition is, where it lives and what it does, as short answers in `count` phrasings;
    its code answers the implementation questions. A name that other files define too (`shared`) is
    asked only with its path: "What is `run`?" has one right answer per file, and training each
    as the answer teaches a guess, and asking it held out scores one."""
    values = {"path": d.path, "name": x.name, "what": x.what}
    train_q, held_q = PHRASINGS["definition"]
    facts: dict[str, object] = {**_words(x.doc, share=0.5), "exact": [d.path]}
    if shared:  # the path is in the question: what it does is left to find, in words no question says
        train_q, held_q = tuple(q for q in train_q if "{path}" in q), PHRASINGS["definition_in"][1]
        asked = {stem(t) for q in held_q for t in tokens(q.format(**values))}
        facts = {"words": [w for w in content_words(x.doc) if stem(w) not in asked][:8], "share": 0.5}
    # Where it lives and its doc comment's first sentence (the summary, by convention), no line
    # number: the line moves with every edit above it, and a long answer makes the loss about it.
    # Every answer goes on past the path with the definition's own words: its doc's summary, or its
    # signature when it has none. An answer form that ends at the path is one greedy decoding takes
    # for every name, documented or not, and stops before the doc it has learned.
    summary = _first_sentence(x.doc) or x.doc
    said = summary or f"`{code.signature(x)}`"
    answers = [f"`{x.name}` ({d.path}): {said}", f"It is a {x.what} in {d.path}: {said}",
               f"`{x.name}` lives in {d.path}: {said}"]
    if summary:
        answers.append(f"{summary} `{x.name}` is a {x.what} in {d.path}.")
    made = _phrased("definition", seed, (d.path, x.name), [q.format(**values) for q in train_q],
                    [q.format(**values) for q in held_q], answers, count, sources, new, facts)
    shown = _cut(f"`{x.name}` is a {x.what} in {d.path}, line {x.line}.\n\n```{fence}\n{x.code}\n```")
    made.add(_made("code", seed, (d.path, x.name), values, shown, sources, new))
    return made


def _file_facts(path: str, defs: list[code.Definition], doc: str, lines: list[str]) -> dict[str, object]:
    """Half of a file's top-level names, leaving out those its path says (parse.py, `parse`); else
    the words of its docstring, or of its first lines when it defines nothing."""
    in_path = set(content_words(path))
    names = [w for w in content_words(" ".join(x.name for x in defs)) if w not in in_path]
    if names:
        return {"words": names[:8], "share": 0.5}
    return _words(doc or ("" if defs else _head(lines, 5)), share=0.5)


def _page(d: DocItem, seed: int, new: bool, sources: dict[str, object], count: int) -> Made:
    """A doc page and each of its sections, as short answers in `count` phrasings: the title and the
    text's first words (a whole page as the answer made the loss about the page's length, and the
    page was not learned); the whole page goes to raw text."""
    from ingest.chunks import section_units

    sections = section_units(d.text)
    title = next((s.title for s in sections if s.title), d.path)
    # The heading's words, unless the path already says them all (docs/usage.md, "Usage"): then the text's.
    named = set(content_words(d.path))
    rest = d.text.replace(title, "", 1)
    facts = _words(title) if set(content_words(title)) - named else _words(rest, share=0.5)
    lead = _lead(rest)
    answers = [f'{d.path} is the page "{title}": {lead}', f"{title}: {lead}", f"It documents {title}: {lead}",
               f'{lead} ({d.path}, "{title}")']
    made = _phrased("doc", seed, (d.path,), *_asked("doc", {"path": d.path, "title": title}), answers, count,
                    sources, new, facts)
    made.raw.append({"kind": "doc", "text": d.text.strip(), "sources": sources, "new": new})
    headed = [s for s in sections if s.title and s.text.strip().count("\n") >= 1]
    if len(headed) > 1:
        for s in headed:
            body = s.text.strip().split("\n", 1)[-1]  # the heading is in the question
            lead = _lead(body)
            answers = [f'Under "{s.title}", {d.path} says: {lead}', f'{lead} ({d.path}, "{s.title}")',
                       f'{d.path}, "{s.title}": {lead}']
            asked = _asked("section", {"path": d.path, "heading": s.title})
            made.add(_phrased("section", seed, (d.path, s.title), *asked, answers, count, sources, new,
                              _words(body, share=0.5)))
    return made


def _lead(text: str, most: int = LEAD_CHARS) -> str:
    """A text's first words on one line: its first paragraphs up to the last sentence that ends within
    `most` characters (or the words that fit, and "…")."""
    lines = (re.sub(r"^\s*#+\s*", "", line) for line in text.splitlines())  # a markdown heading's words stay
    flat = " ".join(" ".join(line for line in lines if not re.fullmatch(r"\s*[=\-~^*]{3,}\s*", line)).split())
    if len(flat) <= most:
        return flat
    cut = flat[:most]
    end = cut.rfind(". ")
    return cut[: end + 1] if end >= most // 3 else cut.rsplit(" ", 1)[0] + " …"


def _head(lines: list[str], n: int = 15) -> str:
    return "\n".join(lines[:n]) + ("\n…" if len(lines) > n else "")


def _cut(text: str) -> str:
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    cut = text[:MAX_ANSWER_CHARS].rsplit("\n", 1)[0] + "\n…"
    if cut.count("```") % 2:
        cut += "\n```"  # close the code block the cut fell in
    return cut + "\n(cut here: the rest is longer than an answer)"
