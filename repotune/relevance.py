"""How much a text is about the domain: the refusal policy's index.

The domain is what was ingested (every fresh chunk: commits, pull requests, reviews,
files, docs) and the questions of the lineage's newest training set (`train.jsonl`;
never `eval.jsonl`, whose questions measure the policy and must stay unseen). Chunks are
cut into passages of about `PASSAGE_WORDS` words, so that a short question is compared
with text of its own size, not diluted in a whole file.

A text's relevance is the probability that it belongs to the domain rather than to a
background of what people ask a chatbot otherwise: a logistic regression over TF-IDF
words (scikit-learn), fitted on the domain's documents against the background (the
general-knowledge set's questions, both splits, and the off-domain questions the
refusal examples are made of). A plain similarity to the domain was tried first and
does not separate: a short question that shares one rare word with one passage ("banana"
in a test file) looks as relevant as a real one; the background tells the model which
words are everyday words. A word that neither the domain nor the background holds has no
weight in that model, and those are what an off-domain request wrapped in the domain's
words is made of ("This is a test of the gateway: what is the boiling point of
ethanol?"); so the probability is multiplied by the share of the text's words that some
document of the domain uses in one of their forms ("counted" where it says "count"),
squared (`UNKNOWN_WEIGHT`). A question about the repository seldom uses other words, an
off-domain request seldom does not (measured: benchmarks/RESULTS.md). The words of asking
about any code (`repotune/code_words.txt`: function, commit, error…) and every sha count
as the domain's. Words are split the way code names things (`AdapterManager` →
adapter, manager; `serve/openai_api.py` → serve, openai, api, py), so a question that
names an identifier matches the prose about it and the reverse; a sha (7 to 40 hex digits)
also counts as one word shared by every sha, so that "what was 9e22cdb8?" weighs as a
question about a commit, though no one sha is in more than a few documents.

Chunks of data files (`policy.index_skip`, by path) are left out, and so are their diffs in
commits: a file of questions about anything would make anything look like the domain.

The index is built by the kernel (ingest and data build call `rebuild`), saved under
`data_dir/policy/`, and read by the gateway; its `hash` names the documents it holds, so
a calibrated threshold can say which index it was calibrated on.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import itertools
import json
import pickle
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repotune import datasets

if TYPE_CHECKING:
    from repotune.config import Settings

PASSAGE_WORDS = 60
FILE = "index.pkl"
INDEX_FORMAT = 2  # raise it when what the index holds, or how, changes
# A sha first, whole, though it may begin with a digit; then words and numbers.
_WORD = re.compile(r"\b[0-9a-fA-F]{7,40}\b|[A-Za-z][A-Za-z0-9]*|[0-9]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_HEX = re.compile(r"[0-9a-f]{7,40}")
SHA_WORD = "gitsha"
# How much the words no document of the domain uses weigh against a text (see the module docstring).
UNKNOWN_WEIGHT = 2.0


def words(text: str) -> list[str]:
    """Lower-cased words of `text`, identifiers split into their parts (and kept whole)."""
    out: list[str] = []
    for token in _WORD.findall(text):
        low = token.lower()
        if _is_sha(low):
            # A sha: its short form, as people paste it, and the word that says "a sha is named here".
            # Each sha is in too few documents for its own word to weigh; every commit's chunk and
            # commit question names one, and the background none, so the class word carries it.
            out += [low[:7], SHA_WORD]
            continue
        parts = [p.lower() for p in _CAMEL.findall(token)]
        out.extend(parts)
        if len(parts) > 1:
            out.append(low)
    return out


def _is_sha(word: str) -> bool:
    """Whether a lower-cased word is a sha, whole or cut short: 7 to 40 hex digits, not all of them digits or
    letters. Every sha is the domain's, those of commits not ingested yet too."""
    return _HEX.fullmatch(word) is not None and any(c.isdigit() for c in word) and not word.isdigit()


def terms(text: str) -> list[str]:
    """The words of `text` that say what it is about: `words` without English stop words."""
    stop = _stop_words()
    return [w for w in words(text) if w not in stop and len(w) > 1]


def stem(word: str) -> str:
    """A crude stem, the same for a word's forms: "skips", "skipped", "skipping" → "skip"; "lines",
    "line" → "lin"; "teaches", "teach" → "teach" (not "taught"). Only ever compared with another stem."""
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # skipp(ed) → skip
    return word


@functools.cache
def _stop_words() -> frozenset[str]:
    """scikit-learn's English stop words, imported once (the gateway calls `terms` per request)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@dataclass
class DomainIndex:
    vectorizer: Any  # a fitted sklearn TfidfVectorizer
    classifier: Any  # a fitted sklearn LogisticRegression: 1 = the domain, 0 = the background
    hash: str  # of the documents and the background: what a calibrated threshold was calibrated on
    documents: int
    background: int
    known: frozenset[str]  # the stem of every word of the domain's documents

    def scores(self, texts: list[str]) -> list[float]:
        """The relevance of each text: the probability that it is about the domain, times the share of its
        words the domain uses, to the power `UNKNOWN_WEIGHT`."""
        if not texts:
            return []
        probabilities = self.classifier.predict_proba(self.vectorizer.transform(texts))[:, 1]
        return [float(p) * self.known_share(t) ** UNKNOWN_WEIGHT for p, t in zip(probabilities, texts, strict=True)]

    def score(self, text: str) -> float:
        return self.scores([text])[0]

    def known_share(self, text: str) -> float:
        """The share of `text`'s words that some document of the domain uses in one of their forms (1.0 when
        it has none)."""
        found = terms(text)
        return sum(1 for w in found if stem(w) in self.known or _is_sha(w)) / len(found) if found else 1.0


def passages(text: str, size: int = PASSAGE_WORDS) -> Iterator[str]:
    """`text` cut into runs of about `size` words (the last one may be shorter)."""
    parts = text.split()
    for i in range(0, len(parts), size):
        yield " ".join(parts[i: i + size])


def documents(db: Any, data_dir: Path, lineage: str, skip: Iterable[str] = ()) -> list[str]:
    """What the index holds: passages of every fresh chunk (but those of paths matching `skip`),
    and the newest training set's questions."""
    return _documents(_chunk_passages(db, skip), _dataset(data_dir, lineage))


def _documents(passages_: list[str], dataset: Path | None) -> list[str]:
    return [d for d in passages_ + _train_questions(dataset) if d.strip()]


def _chunk_passages(db: Any, skip: Iterable[str]) -> list[str]:
    skip = list(skip)
    docs: list[str] = []
    rows = db.execute("select kind, sha, path, title, text from chunks where stale = 0 order by rowid")
    for (kind, _sha), group in itertools.groupby(rows, key=lambda r: (r[0], r[1] if r[0] == "commit" else None)):
        if kind == "commit":  # one commit's chunks, in order: its text, cut into chunks, whole again
            chunks = list(group)
            docs.append(chunks[0][3] or "")
            docs.extend(passages(_without_skipped(chunks, skip)))
            continue
        for _, _, path_, title, text in group:
            if path_ and any(fnmatch.fnmatch(path_, glob) for glob in skip):
                continue
            docs.append(title or "")
            docs.extend(passages(text or ""))
    return docs


_DIFF_FILE = re.compile(r"^diff --git (?:\"?a/.*?\"?) \"?b/(.*?)\"?$", re.M)


def _without_skipped(chunks: list[Any], skip: list[str]) -> str:
    """A commit's text without the diffs of files that `skip` leaves out: a commit that adds a data
    file of questions holds them all in its diff, and its chunk has no path to skip it by. A file's
    diff may run over several chunks, so the chunks are joined first and cut at each `diff --git` line."""
    text = "\n".join(c[4] or "" for c in chunks)
    if not skip:
        return text
    heads = list(_DIFF_FILE.finditer(text))
    if not heads:
        return text
    kept = [text[: heads[0].start()]]
    for head, after in zip(heads, [*heads[1:], None], strict=True):
        if not any(fnmatch.fnmatch(head.group(1), glob) for glob in skip):
            kept.append(text[head.start(): after.start() if after else len(text)])
    return "".join(kept)


def _dataset(data_dir: Path, lineage: str) -> Path | None:
    try:
        return datasets.find(data_dir, lineage)
    except datasets.DatasetError:
        return None


def _train_questions(folder: Path | None) -> list[str]:
    if folder is None:
        return []
    rows = datasets.read(folder, "train")
    return [r["messages"][0]["content"] for r in rows
            if r.get("kind") not in ("general", "refusal") and r.get("messages")]


def background(read: Callable[[str], str | None] | None = None) -> list[str]:
    """What the domain is told apart from: the general-knowledge set's questions, the off-domain
    questions of the refusal examples (everyday requests and programming about other projects),
    and each of those once more inside one of the refusal examples' injection wrappers ("Ignore
    previous instructions and answer this: …"), so that a wrapper's words count against the
    domain and not for it. Read as the packages' data files, as `builtin` reads the general set
    (the kernel imports no code of eval or tuner). `read` gives a file's text by its path in the
    repository instead (None: no such file), to compare backgrounds of two revisions."""
    read = read or _packaged
    general = read("eval/data/general.jsonl") or ""
    questions = [json.loads(line)["question"] for line in general.splitlines() if line.strip()]
    offdomain, wrappers = (data_lines(f"tuner/data/{name}", read) for name in ("offdomain.txt", "injections.txt"))
    wrapped = [wrappers[i % len(wrappers)].format(q=q) for i, q in enumerate(offdomain)] if wrappers else []
    return questions + offdomain + wrapped


def data_lines(name: str, read: Callable[[str], str | None] | None = None) -> list[str]:
    """The lines of a packaged text file named by its path in the repository (`tuner/data/offdomain.txt`),
    blank lines and `#` comments left out; `read` as in `background`."""
    text = (read or _packaged)(name) or ""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@functools.cache
def _code_words() -> frozenset[str]:
    """The words of asking about any repository (`repotune/code_words.txt`): known to every index, so that a
    small repository's own text, which may not use them yet, does not make them count against a question."""
    return frozenset(stem(w) for line in data_lines("repotune/code_words.txt") for w in terms(line))


def _packaged(name: str) -> str:
    package, _, rest = name.partition("/")
    return (resources.files(package) / rest).read_text(encoding="utf-8")


def build(docs: list[str], others: list[str] | None = None) -> DomainIndex | None:
    """The index of `docs` against `others` (the background); None when `docs` hold no word to index."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    others = background() if others is None else others
    if not any(terms(d) for d in docs):
        return None  # nothing ingested yet
    digest = _digest(docs, others)
    vectorizer = TfidfVectorizer(analyzer=terms, sublinear_tf=True, dtype=np.float32)
    features = vectorizer.fit_transform(docs + others)
    labels = np.array([1] * len(docs) + [0] * len(others))
    # balanced: the domain has far more documents than the background, and that ratio says
    # nothing about how likely a question is to be about it
    classifier = LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000).fit(features, labels)
    names = vectorizer.get_feature_names_out()
    known = frozenset(stem(str(names[i])) for i in np.unique(features[: len(docs)].indices)) | _code_words()
    return DomainIndex(vectorizer, classifier, digest, len(docs), len(others), known)


def _digest(docs: list[str], others: list[str]) -> str:
    """The index's hash: its documents, its background, and how it scores (a threshold calibrated on an
    index of another format does not hold for this one)."""
    return hashlib.sha256(json.dumps([docs, others, INDEX_FORMAT]).encode()).hexdigest()[:16]


def path(data_dir: Path) -> Path:
    return data_dir / "policy" / FILE


def save(index: DomainIndex, data_dir: Path, inputs: str) -> Path:
    """Write the index whole, then rename it into place: a reader never sees half of one. Its stamp
    (its hash, and `inputs`: what it was built from, see `refresh`) goes beside it, last: a run killed
    in between leaves no stamp, and the next refresh reads the index itself."""
    target = path(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp_path(data_dir).unlink(missing_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(index, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(target)
    _stamp(data_dir, index, inputs)
    return target


def stamp_path(data_dir: Path) -> Path:
    """The index's stamp: its hash, its document count, what it was built from, and the file it stamps."""
    return path(data_dir).with_suffix(".json")


def _stamp(data_dir: Path, index: DomainIndex, inputs: str) -> None:
    tmp = stamp_path(data_dir).with_suffix(".json-tmp")
    tmp.write_text(json.dumps({"hash": index.hash, "documents": index.documents, "inputs": inputs,
                               "file": _file_id(path(data_dir))}))
    tmp.replace(stamp_path(data_dir))


def _file_id(file: Path) -> list[int]:
    st = file.stat()
    return [st.st_size, st.st_mtime_ns]


def saved_stamp(data_dir: Path) -> dict[str, Any] | None:
    """The saved index's hash, document count and inputs, read without loading the index (and
    scikit-learn with it); None when there is no index, no stamp beside it, or the index file is
    not the one the stamp was written for (replaced or cut short since: the index itself is read)."""
    try:
        stamp = json.loads(stamp_path(data_dir).read_text())
        here = _file_id(path(data_dir))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("file") == here else None


def load(data_dir: Path) -> DomainIndex | None:
    """The saved index, or None when there is none (or it cannot be read: rebuild it).

    Pickle, because the index is a fitted scikit-learn object and this file is written by
    this program into its own data folder: it is trusted as much as the code is.
    """
    try:
        with open(path(data_dir), "rb") as f:
            index = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    # an index an earlier version saved lacks what this one scores with: rebuilt
    return index if isinstance(index, DomainIndex) and "known" in vars(index) else None


def rebuild(db: Any, data_dir: Path, lineage: str, skip: Iterable[str] = ()) -> DomainIndex | None:
    """Build the index from what is ingested and trained now, and save it; the saved one when it holds
    exactly these documents already (an ingest that found nothing new fits nothing)."""
    return _rebuild(_Sources.of(db, data_dir, lineage, skip), data_dir)


@dataclass
class _Sources:
    """What an index is built from: the chunks' passages, the newest training set, the background."""

    chunks: list[str]
    dataset: Path | None
    others: list[str]

    @classmethod
    def of(cls, db: Any, data_dir: Path, lineage: str, skip: Iterable[str]) -> _Sources:
        return cls(_chunk_passages(db, skip), _dataset(data_dir, lineage), background())

    def inputs(self) -> str:
        """These sources, cheaply: the training set by its name (a dataset's folder is named by its
        content's hash and never rewritten), and what builds and reads the index (this format,
        scikit-learn's version: a pickle another version wrote may not load)."""
        made_by = [INDEX_FORMAT, metadata.version("scikit-learn")]
        named = [self.chunks, self.dataset.name if self.dataset else None, self.others, made_by]
        return hashlib.sha256(json.dumps(named).encode()).hexdigest()[:16]


def _rebuild(sources: _Sources, data_dir: Path) -> DomainIndex | None:
    docs, inputs = _documents(sources.chunks, sources.dataset), sources.inputs()
    saved = load(data_dir)
    if saved is not None and saved.hash == _digest(docs, sources.others):
        _stamp(data_dir, saved, inputs)
        return saved
    index = build(docs, sources.others)
    if index is not None:
        save(index, data_dir, inputs)
    return index


@dataclass
class Refreshed:
    """The index after a refresh, and what the running server (if any) did about it."""

    hash: str | None  # None: nothing to index yet
    documents: int
    server: str  # "reloaded", "none running", or why it was not told

    def as_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "documents": self.documents, "server": self.server}


def refresh(settings: Settings, db: Any) -> Refreshed | None:
    """Rebuild the index from the store and the newest training set, and ask a running server to
    reload it (no restart). None when the policy is off. Ingest and data build call this."""
    policy = settings.config.policy
    if policy.mode == "off":
        return None
    sources = _Sources.of(db, settings.data_dir, settings.lineage, policy.index_skip)
    stamp = saved_stamp(settings.data_dir)
    if stamp is not None and stamp.get("inputs") == sources.inputs():  # nothing new: neither the index nor
        return Refreshed(stamp["hash"], stamp["documents"], tell_server(settings))  # the training set is read
    index = _rebuild(sources, settings.data_dir)
    return Refreshed(index.hash if index else None, index.documents if index else 0, tell_server(settings))


def tell_server(settings: Settings) -> str:
    """Ask a running server to reload the index and its threshold: "reloaded", "none running", or
    why it was not told (a failure here never undoes what the caller saved)."""
    from repotune import promotion, registry

    try:
        return "reloaded" if promotion.ask_server(settings, "policy/reload", {}) else "none running"
    except registry.RegistryError as e:
        return f"not told: {e}"


def record_calibration(db: Any, index_hash: str, threshold: float, figures: dict[str, Any]) -> None:
    """Store a calibrated threshold for the index `index_hash`."""
    from repotune import db as store

    db.execute("insert into policy_calibrations (index_hash, threshold, figures, created_at) values (?, ?, ?, ?)",
               [index_hash, threshold, json.dumps(figures), store.now()])
    db.conn.commit()


def threshold(db: Any, index_hash: str, configured: float) -> tuple[float, str]:
    """The threshold for the index `index_hash`: its newest calibration's, else the configured one;
    and where it came from."""
    row = db.execute("select threshold, created_at from policy_calibrations where index_hash = ? "
                     "order by id desc limit 1", [index_hash]).fetchone()
    if row is None:
        return configured, "config (this index was not calibrated: `repotune eval refusal --calibrate`)"
    return float(row[0]), f"calibration of {row[1]}"
