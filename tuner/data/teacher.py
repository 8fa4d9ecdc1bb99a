"""Q&A written by a teacher LLM at any OpenAI-compatible endpoint, through the openai client.

Each chunk (with its repository, source and date) is sent once per prompt version and
teacher model: the answer, parsed or not, is cached in the store as it arrives, so a
build over the same data sends no request, and a build cut short (the endpoint down,
rate limits that outlast the retries) keeps everything already answered and finishes
with what it has. The answer must be JSON of one exact shape (asked for with a JSON
schema as `response_format`); anything else is malformed, dropped and counted. The pairs
that parse are then filtered, at each build (so changing a threshold costs no request):
length, grounding (the share of the answer's words found in the chunk), near-duplicate
questions, and optionally a judge pass (the teacher asked whether the chunk supports
the answer, cached the same way).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from repotune.config import TeacherSection
from repotune.db import now, transaction
from tuner.data.examples import Example, chat

if TYPE_CHECKING:
    import sqlite_utils

PROMPT_VERSION = "1"

def schema(pairs: int) -> dict[str, Any]:
    """The JSON asked for: exactly `pairs` question/answer pairs."""
    return {
        "type": "object",
        "properties": {"pairs": {**PAIRS, "minItems": pairs, "maxItems": pairs}},
        "required": ["pairs"],
        "additionalProperties": False,
    }


PAIRS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer"],
        "additionalProperties": False,
    },
}

SYSTEM = (
    "You write question and answer pairs that teach an assistant about a code repository. "
    "Use only what the given text says. Questions must make sense without the text in front of the "
    "reader: name the file, commit or pull request they are about. Answers must be correct, complete "
    "and based on the text. Reply with JSON only, of the form "
    '{"pairs": [{"question": "...", "answer": "..."}]}.'
)
JUDGE = ("Reply with one word, yes or no: does the text support this answer to this question?\n\n"
         "<text>\n{text}\n</text>\n\nQuestion: {question}\nAnswer: {answer}")


class _Pair(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str
    answer: str


class _Pairs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    pairs: list[_Pair]


def parse(text: str) -> list[dict[str, str]] | None:
    """The pairs of a teacher's answer, or None when it is not exactly the JSON asked for."""
    try:
        return [p.model_dump() for p in _Pairs.model_validate(json.loads(text)).pairs]
    except (ValueError, ValidationError):
        return None


@dataclass
class ChunkRow:
    id: str
    kind: str
    path: str | None
    sha: str | None
    pr_number: int | None
    title: str
    text: str
    rowid: int
    date: str

    def sources(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chunks": [self.id]}
        if self.kind == "commit":
            out["commit"] = self.sha
        elif self.kind == "pull_request":
            out["pr"] = self.pr_number
        elif self.path:
            out["path"] = f"{self.path}@{self.sha}"
        return out

    def about(self) -> str:
        date = f", {self.date[:10]}" if self.date else ""
        if self.kind == "commit":
            return f"commit {str(self.sha)[:12]} ({self.title}{date})"
        if self.kind == "pull_request":
            return f"pull request #{self.pr_number} ({self.title}{date})"
        return f"{self.kind} {self.path}{' as of ' + self.date[:10] if self.date else ''}"


def chunks(db: sqlite_utils.Database, repo: str) -> list[ChunkRow]:
    """The current, trusted chunks, newest first, with the date of what they come from."""
    rows = db.execute(
        "select c.id, c.kind, c.path, c.sha, c.pr_number, c.title, c.text, c.rowid, "
        "coalesce(cm.committed_at, pr.merged_at, pr.updated_at, dc.committed_at, '') from chunks c "
        "left join commits cm on c.kind = 'commit' and cm.repo = c.repo and cm.sha = c.sha "
        "left join pull_requests pr on c.kind = 'pull_request' and pr.repo = c.repo and pr.number = c.pr_number "
        "left join documents d on d.repo = c.repo and d.kind = c.kind and d.path = c.path and d.sha = c.sha "
        "left join commits dc on dc.repo = d.repo and dc.sha = d.at_commit "
        "where c.repo = ? and c.stale = 0 and c.trusted = 1 order by c.rowid desc", [repo],
    )
    return [ChunkRow(*row) for row in rows]


@dataclass
class Report:
    chunks: int = 0  # chunks the teacher was asked about, from the cache or not
    requests: int = 0  # sent by this build
    cached: int = 0  # answered from the cache
    malformed: int = 0  # answers that were not the JSON asked for (dropped)
    failed: int = 0  # requests that got no answer (not cached: tried again next build)
    pairs: int = 0  # parsed pairs
    kept: int = 0  # pairs that passed the filters
    dropped: Counter[str] = field(default_factory=Counter)  # filter -> pairs dropped
    stopped: str | None = None  # why the teacher was given up before the end

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "dropped"}, "dropped": dict(self.dropped),
                "malformed_share": round(self.malformed / max(1, self.chunks - self.failed), 4)}


Progress = Callable[[str, int, int | None, str], None]


class Teacher:
    def __init__(self, cfg: TeacherSection, api_key: str | None, db: sqlite_utils.Database, repo: str):
        from openai import OpenAI

        assert cfg.base_url, "tuner.teacher.base_url"
        self.cfg = cfg
        self.db = db
        self.repo = repo
        self.client = OpenAI(base_url=cfg.base_url, api_key=api_key or "none", timeout=cfg.timeout_s,
                             max_retries=cfg.max_retries)
        self.report = Report()

    def generate(self, rows: list[ChunkRow], since: int, progress: Progress) -> list[Example]:
        rows = rows[: self.cfg.max_chunks] if self.cfg.max_chunks else rows
        self.report.chunks = len(rows)
        answers = self._cached([self._key(r.id) for r in rows])
        self.report.cached = len(answers)
        todo = [r for r in rows if self._key(r.id) not in answers]
        progress("teacher", len(answers), len(rows), "")
        for row, text in self._ask_all(todo, self._messages, lambda done: progress(
                "teacher", len(answers) + done, len(rows), f"{self.report.requests} requests")):
            pairs = parse(text)
            self._store(self._key(row.id), row.id, "ok" if pairs is not None else "malformed", pairs or [], text)
            answers[self._key(row.id)] = (pairs, text)
        if self.report.stopped:
            progress("teacher", len(answers), len(rows), "stopped: " + self.report.stopped[:60])
        kept: list[tuple[ChunkRow, dict[str, str]]] = []
        seen: set[str] = set()
        for row in rows:
            pairs, _ = answers.get(self._key(row.id), (None, ""))
            if pairs is None:
                self.report.malformed += self._key(row.id) in answers
                continue
            self.report.pairs += len(pairs)
            kept += [(row, p) for p in self._filter(row, pairs, seen)]
        if self.cfg.judge and kept:
            kept = self._judged(kept)
        self.report.kept = len(kept)
        return [Example(chat(p["question"].strip(), p["answer"].strip()), "teacher", row.kind, row.sources(),
                        row.rowid > since) for row, p in kept]

    # --- requests -----------------------------------------------------------------

    def _messages(self, row: ChunkRow) -> list[dict[str, str]]:
        n = self.cfg.pairs_per_chunk
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Repository: {self.repo}\nText: {row.about()}\n\n<text>\n{row.text}\n</text>"
                                        f"\n\nWrite {n} question and answer pair{'s' if n > 1 else ''} about it."},
        ]

    def _ask_all(self, rows: list[Any], messages: Callable[[Any], list[dict[str, str]]],
                 tick: Callable[[int], None], json_answer: bool = True) -> Any:
        """(row, answer text) as answers arrive, `concurrency` requests in flight. The
        first error that outlasts the client's retries stops the rest: a down or
        throttled endpoint is not hammered once per chunk."""
        import openai

        done = 0
        it = iter(rows)
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            running: dict[Future[str], Any] = {}
            while True:
                while not self.report.stopped and len(running) < self.cfg.concurrency and (row := next(it, None)):
                    running[pool.submit(self._ask, messages(row), json_answer)] = row
                    self.report.requests += 1
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    row = running.pop(future)
                    try:
                        text = future.result()
                    except openai.BadRequestError:  # this chunk only (too long for the teacher, say)
                        self.report.failed += 1
                        self.report.dropped["refused by the teacher"] += 1
                        continue
                    except (openai.APIError, OSError) as e:
                        self.report.failed += 1
                        self.report.stopped = self.report.stopped or _reason(e)
                        continue
                    done += 1
                    tick(done)
                    yield row, text

    def _ask(self, messages: list[dict[str, str]], json_answer: bool) -> str:
        extra: dict[str, Any] = {}
        if json_answer:
            extra["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "qa_pairs", "schema": schema(self.cfg.pairs_per_chunk), "strict": True}}
        reply = self.client.chat.completions.create(
            model=self.cfg.model, messages=messages,  # type: ignore[arg-type]
            max_tokens=self.cfg.max_tokens if json_answer else 2, temperature=self.cfg.temperature, **extra,
        )
        return (reply.choices[0].message.content or "") if reply.choices else ""

    # --- filters --------------------------------------------------------------------

    def _filter(self, row: ChunkRow, pairs: list[dict[str, str]], seen: set[str]) -> list[dict[str, str]]:
        kept: list[dict[str, str]] = []
        words = content_words(row.text)
        for p in pairs:
            question, answer = p["question"].strip(), p["answer"].strip()
            if len(question) < 10 or not self.cfg.min_answer_chars <= len(answer) <= self.cfg.max_answer_chars:
                self.report.dropped["length"] += 1
            elif grounding(answer, words) < self.cfg.min_grounding:
                self.report.dropped["grounding"] += 1
            elif _norm(question) in seen or any(_jaccard(question, k["question"]) >= 0.8 for k in kept):
                self.report.dropped["near-duplicate"] += 1
            else:
                seen.add(_norm(question))
                kept.append(p)
        return kept

    def _judged(self, kept: list[tuple[ChunkRow, dict[str, str]]]) -> list[tuple[ChunkRow, dict[str, str]]]:
        keys = [self._key(row.id, "judge", p["question"], p["answer"]) for row, p in kept]
        verdicts = {k: text for k, (_, text) in self._cached(keys).items()}
        todo = [(row, p) for (row, p), k in zip(kept, keys, strict=True) if k not in verdicts]

        def ask(item: tuple[ChunkRow, dict[str, str]]) -> list[dict[str, str]]:
            row, p = item
            return [{"role": "user", "content": JUDGE.format(text=row.text, **p)}]

        for (row, p), text in self._ask_all(todo, ask, lambda done: None, json_answer=False):
            key = self._key(row.id, "judge", p["question"], p["answer"])
            self._store(key, row.id, "ok", [], text)
            verdicts[key] = text
        out = []
        for item, key in zip(kept, keys, strict=True):
            if key not in verdicts:
                continue  # not judged (the teacher stopped): left out, judged next build
            if verdicts[key].strip().lower().startswith("yes"):
                out.append(item)
            else:
                self.report.dropped["judge"] += 1
        return out

    # --- cache ----------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return hashlib.sha256("\0".join([*parts, PROMPT_VERSION, self.cfg.model]).encode()).hexdigest()

    def _cached(self, keys: list[str]) -> dict[str, tuple[list[dict[str, str]] | None, str]]:
        out: dict[str, tuple[list[dict[str, str]] | None, str]] = {}
        for i in range(0, len(keys), 500):
            part = keys[i: i + 500]
            for key, status, pairs, raw in self.db.execute(
                f"select key, status, pairs, raw from teacher_cache where key in ({','.join('?' * len(part))})", part,
            ):
                out[key] = (json.loads(pairs) if status == "ok" else None, raw)
        return out

    def _store(self, key: str, chunk_id: str, status: str, pairs: list[dict[str, str]], raw: str) -> None:
        with transaction(self.db):  # each answer kept as it arrives
            self.db.execute(
                "insert or replace into teacher_cache (key, chunk_id, prompt_version, model, status, pairs, raw, "
                "created_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
                [key, chunk_id, PROMPT_VERSION, self.cfg.model, status, json.dumps(pairs), raw, now()],
            )


def _reason(e: BaseException) -> str:
    status = getattr(e, "status_code", None)
    return f"{type(e).__name__}" + (f" ({status})" if status else "") + f": {str(e)[:200]}"


_WORD = re.compile(r"[a-z0-9_]{3,}")
_STOP = frozenset((
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our",
    "out", "has", "him", "his", "how", "its", "may", "new", "now", "old", "see", "two", "who", "did", "get",
    "let", "put", "say", "she", "too", "use", "that", "with", "have", "this", "will", "your", "from", "they",
    "been", "were", "what", "when", "which", "their", "there", "would", "about", "into", "more", "other",
    "some", "than", "then", "them", "these", "also", "only", "does", "each", "used", "using", "file", "code",
))


def content_words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower())) - _STOP


def grounding(answer: str, chunk_words: set[str]) -> float:
    """The share of the answer's words (three letters or more, common words aside) found in the chunk."""
    words = content_words(answer)
    return len(words & chunk_words) / len(words) if words else 0.0


def _norm(question: str) -> str:
    return " ".join(_WORD.findall(question.lower()))


def _jaccard(a: str, b: str) -> float:
    x, y = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    return len(x & y) / len(x | y) if x | y else 1.0
