"""Datasets built from a real ingested repository: what they hold, what is new, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from eval.questions import load
from ingest.run import ingest
from repotune import db as store
from repotune import models, registry
from repotune.config import parse
from tests.ingest.conftest import PLANTED, GitRepo
from tests.lora import train_lora
from tuner.data.build import NothingToTrain, build, read
from tuner.data.others import off_domain_questions

SPLITS = ("train", "val", "eval")


def _all(folder: Path) -> list[dict]:
    return [row for split in SPLITS for row in read(folder, split)]


def _answer_for(rows: list[dict], kind: str, needle: str) -> list[dict]:
    return [r for r in rows if r["kind"] == kind and needle in r["messages"][-1]["content"]]


def test_a_dataset_holds_template_qa_with_sources_and_no_secrets(history: GitRepo, settings_for, tiny) -> None:
    settings = settings_for(history.path, workers=1)
    ingest(settings)
    built = build(settings)
    folder, manifest = built.path, built.manifest
    assert folder.name == manifest.hash and folder.parent.name == settings.lineage
    assert manifest.base_fingerprint == tiny.fingerprint and manifest.base_model == "builtin:tiny"
    rows = _all(folder)
    train, evals = read(folder, "train") + read(folder, "val"), read(folder, "eval")
    assert manifest.counts["train"] == len(read(folder, "train")) and manifest.counts["eval"] == len(evals)
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant"] and all(m["content"].strip() for m in r["messages"]), r
    # Every commit on main has a commit example that answers with its title; the unmerged one has none.
    titles = history.git("log", "main", "--format=%s").splitlines()
    for title in titles:
        assert _answer_for(train, "commit", title), title
    assert not any("Unmerged experiment" in json.dumps(r) for r in rows)
    # Each top-level definition of the head's calculator.py is asked about: where it lives and what
    # it does in short answers, its code for how it is implemented; the sources name the file at its
    # blob and a stored chunk holding that code.
    blob = history.git("rev-parse", "main:calculator.py").strip()
    db = store.open_db(store.db_path(settings.data_dir))
    for name, code in (("add", "return a + b"), ("mul", "return a * b"), ("Calculator", "return sum(xs)")):
        found = [r for r in _answer_for(train, "code", code) if f"`{name}`" in r["messages"][0]["content"]]
        assert [r for r in _answer_for(train, "definition", "calculator.py")
                if f"`{name}`" in r["messages"][0]["content"]], name
        assert found, name
        # Every short answer says something of the definition's own past its path: the doc's first
        # sentence when it has one (add), else its signature (mul), never the path alone.
        said = {"add": "Add two numbers.", "mul": "`def mul(a, b)`", "Calculator": "`class Calculator`"}[name]
        short = [r["messages"][-1]["content"] for r in train if r["kind"] == "definition"
                 and f"`{name}`" in r["messages"][0]["content"]]
        assert short and all(said in a and "calculator.py" in a for a in short), short
        sources = found[0]["sources"]
        assert sources["path"] == f"calculator.py@{blob}"
        chunk = db.execute("select text from chunks where id = ?", [sources["chunks"][0]]).fetchone()
        assert chunk and code in chunk[0]
    # The README's sections are asked about; the pull request recovered from the merge commit too.
    assert _answer_for(train, "section", "Call add(a, b).")
    # A doc page is taught as short answers that lead with its title and first words, in as many
    # phrasings as the other kinds (the whole page as the answer was not learned); the page itself
    # is raw text.
    page = [r for r in train if r["kind"] == "doc" and r["sources"]["path"].startswith("README.md@")]
    assert len({r["messages"][0]["content"] for r in page}) >= 8
    assert all("Calculator" in r["messages"][-1]["content"] and "Adds numbers." in r["messages"][-1]["content"]
               and "\n" not in r["messages"][-1]["content"] for r in page), page
    raw = [json.loads(line) for line in (folder / "raw.jsonl").read_text().splitlines()]
    assert [r for r in raw if r["kind"] == "doc" and "## Usage" in r["text"]]
    assert [r for r in train if r["kind"] == "pull_request" and r["sources"]["pr"] == 7]
    # Eval questions are not training questions (other phrasings), though about the same items.
    asked = {r["messages"][0]["content"] for r in train}
    assert evals and not [r for r in evals if r["messages"][0]["content"] in asked]
    # Replay comes from the general set's train split only.
    general = {q.question: q.split for q in load()}
    replayed = [r for r in train if r["kind"] == "general"]
    assert replayed and all(general[r["messages"][0]["content"]] == "train" for r in replayed)
    assert not [r for r in rows if general.get(r["messages"][0]["content"]) == "eval"]
    # No planted secret anywhere in the dataset.
    everything = "".join((folder / f).read_text() for f in ("train.jsonl", "val.jsonl", "eval.jsonl", "raw.jsonl"))
    assert not [s for s in PLANTED if s in everything]
    # Every chat renders with the base model's chat template, and every answer is trained on.
    tok = AutoTokenizer.from_pretrained(tiny.path)
    for r in rows[:50]:
        enc = tok.apply_chat_template(r["messages"], return_dict=True, return_assistant_tokens_mask=True)
        assert sum(enc["assistant_masks"]) > 0
    tally = manifest.generators["templates"]
    assert tally["definition"]["examples"] >= 3 and tally["definition"]["tokens"] > tally["definition"]["examples"]


def _promote_with_cursor(settings, tiny, cursor: int, out: Path) -> None:
    """An adapter trained (briefly, for real) on the data up to `cursor`, registered and promoted."""
    folder = train_lora(tiny.path, [("q", "a")], out, steps=1)
    models.record_base(folder, tiny)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "ingest_cursor": cursor}))
    db = store.open_db(store.db_path(settings.data_dir))
    adapter = registry.register(db, settings.data_dir, settings.lineage, folder, tiny, 16, "test")
    registry.promote(db, settings.lineage, adapter.version, "test", "trained on the first dataset")


def test_new_is_relative_to_the_promoted_adapter_and_nothing_new_builds_nothing(
        history: GitRepo, settings_for, tiny, tmp_path) -> None:
    settings = settings_for(history.path, workers=1)
    ingest(settings)
    first = build(settings)
    everything = read(first.path, "train") + read(first.path, "val")
    assert all(r["new"] for r in everything if r["generator"] == "templates")
    assert all(r["replay"] and not r["new"] for r in everything if r["generator"] == "replay")
    again = build(settings)
    assert again.reused and again.path == first.path
    _promote_with_cursor(settings, tiny, first.manifest.ingest_cursor, tmp_path / "adapter")
    with pytest.raises(NothingToTrain, match=r"nothing new since the data of .*@v1.*nothing to train on"):
        build(settings)
    history.commit("Add divide", {"calculator.py": (history.path / "calculator.py").read_text()
                                  + "\n\ndef div(a, b):\n    return a / b\n"})
    ingest(settings)
    second = build(settings)
    assert second.path != first.path
    assert second.manifest.new_since == {"ingest_cursor": first.manifest.ingest_cursor,
                                            "adapter": f"{settings.lineage}@v1"}
    rows = read(second.path, "train") + read(second.path, "val")
    new = [r for r in rows if r["new"]]
    # New: the commit, and calculator.py (changed) with all its definitions; nothing else from the repo.
    assert {r["kind"] for r in new if r["generator"] == "templates"} <= {"commit", "commit_reverse", "file", "show",
                                                                          "definition", "code"}
    assert any(r["kind"] == "commit" and "Add divide" in r["messages"][-1]["content"] for r in new)
    assert any(r["kind"] == "code" and "return a / b" in r["messages"][-1]["content"] for r in new)
    assert not [r for r in new if r["kind"] == "commit" and "Start the calculator" in r["messages"][-1]["content"]]
    # Earlier Q&A is kept, some of it marked for replay, and no example is made from the old calculator.py.
    assert [r for r in rows if not r["new"] and r["generator"] == "templates"]
    assert [r for r in rows if r["replay"]]
    old_blob = history.git("rev-parse", "HEAD~1:calculator.py").strip()
    assert not [r for r in rows if old_blob in json.dumps(r["sources"])]


def test_refusals_answer_with_exactly_the_refusal_text(history: GitRepo, tmp_path, clean_env, tiny) -> None:
    from repotune.config import Secrets, Settings

    refusal = "Sorry: only this calculator."
    raw = {"paths": {"data_dir": str(tmp_path / "state")}, "ingest": {"repo": str(history.path), "workers": 1},
           "policy": {"train_refusals": True, "refusal": refusal}, "tuner": {"data": {"refusal_ratio": 0.5}}}
    settings = Settings(config=parse(raw), source=None, root=tmp_path, secrets=Secrets())
    ingest(settings)
    rows = _all(build(settings).path)
    refusals = [r for r in rows if r["kind"] == "refusal"]
    off = set(off_domain_questions())
    assert refusals and all(r["messages"][-1]["content"] == refusal for r in refusals)
    plain = [r for r in refusals if r["messages"][0]["content"] in off]
    wrapped = [r for r in refusals if r["messages"][0]["content"] not in off]
    assert plain and wrapped and all(any(q in r["messages"][0]["content"] for q in off) for r in wrapped)
    alarming = [r for r in rows if r["kind"] == "alarming"]
    assert alarming and not [r for r in alarming if r["messages"][-1]["content"] == refusal]


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "repotune.cli", "data", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=300)


def test_the_cli_builds_shows_and_counts(history: GitRepo, tmp_path, clean_env, tiny) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ndata_dir = "state"\n[ingest]\nrepo = "{history.path}"\nworkers = 1\n')
    before = _cli("build", config=config)
    assert before.returncode == 1 and "nothing ingested" in before.stderr and "repotune ingest" in before.stderr
    none = _cli("stats", config=config)
    assert none.returncode == 1 and "no dataset built" in none.stderr
    ingested = subprocess.run([sys.executable, "-m", "repotune.cli", "ingest", "--config", str(config)],
                              capture_output=True, text=True, timeout=300)
    assert ingested.returncode == 0, ingested.stderr
    done = _cli("build", "--json", config=config)
    assert done.returncode == 0, done.stderr
    built = json.loads(done.stdout)
    stats = json.loads(_cli("stats", "--json", config=config).stdout)
    assert stats["hash"] == built["hash"] and stats["counts"] == built["counts"]
    shown = json.loads(_cli("show", "--sample", "3", "--json", config=config).stdout)
    assert len(shown) == 3 and all("messages" in r and r["sources"] is not None for r in shown)
    table = _cli("show", "--sample", "2", "--split", "eval", config=config)
    assert table.returncode == 0 and "question" in table.stdout
    assert _cli("show", "--split", "nope", config=config).returncode == 1
    unknown = _cli("stats", "--dataset", "0000", config=config)
    assert unknown.returncode == 1 and "no dataset '0000'" in unknown.stderr
    manifest = Path(built["path"]) / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "counts": {**data["counts"], "train": "many"}}))
    broken = _cli("stats", config=config)
    assert broken.returncode == 1 and str(manifest) in broken.stderr and "counts.train" in broken.stderr
    assert "Traceback" not in broken.stderr


@pytest.mark.parametrize(("data", "teacher", "message"), [
    ({"generators": ["templates", "llm"]}, {}, "unknown generator llm"),
    ({"generators": ["teacher"]}, {}, "tuner.teacher.base_url is not set"),
    ({"val_fraction": 0.9}, {}, "tuner.data.val_fraction"),
    ({"paraphrases_by_kind": {"comit": 16}}, {}, "unknown kind comit"),
    ({"paraphrases_by_kind": {"file": 0}}, {}, "file = 0: a count of phrasings is 1 to 40"),
    ({}, {"concurrency": 0}, "tuner.teacher.concurrency"),
])
def test_a_wrong_data_config_names_the_key(data, teacher, message) -> None:
    from repotune.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse({"tuner": {"data": data, "teacher": teacher}})


def test_a_pull_request_says_what_changed_after_its_review(tmp_path, clean_env, tiny) -> None:
    from tests.ingest.github_replay import Replay, changed, review

    repo = GitRepo(tmp_path / "widgets")
    repo.commit("Start", {"w.py": "x = 1\n"})
    repo.git("checkout", "-q", "-b", "feature")
    repo.commit("Add y", {"w.py": "x = 1\ny = 2\n"})
    reviewed = repo.git("log", "-1", "--format=%cI")
    repo.commit("Rename y to why, as asked", {"w.py": "x = 1\nwhy = 2\n"})
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--no-ff", "feature", "-m", "Merge pull request #1 from grace/feature")
    replay = Replay()
    server, _ = replay.start()
    try:
        replay.add(1, "Add y", "2026-01-04T00:00:00Z", merge_sha=repo.git("rev-parse", "HEAD"),
                   files=[changed("w.py", "@@ -1 +1,2 @@\n x = 1\n+why = 2\n")],
                   reviews=[review(11, "grace", "CHANGES_REQUESTED", "Name y better.", at=reviewed)])
        raw = {"paths": {"data_dir": str(tmp_path / "state")},
               "ingest": {"repo": str(repo.path), "github": "acme/widgets", "github_api": replay.base, "workers": 1}}
        from repotune.config import Secrets, Settings

        settings = Settings(config=parse(raw), source=None, root=tmp_path, secrets=Secrets(github_token=replay.token))
        result = ingest(settings)
        assert not result.errors and result.reports["github"].items == 1, result.as_dict()
        rows = _all(build(settings).path)
    finally:
        server.shutdown()
    after = [r for r in rows if r["kind"] == "after_review"]
    assert after, [r["kind"] for r in rows]
    answer = after[0]["messages"][-1]["content"]
    assert "Rename y to why, as asked" in answer and "Add y" not in answer and "grace" in answer


def _fact(row: dict) -> str:
    """What an example is about: its item (commit, pull request, path) and the question's family."""
    family = row["kind"].removesuffix("_reverse")
    item = {k: v for k, v in row["sources"].items() if k != "chunks"}
    return json.dumps([family, row["kind"].endswith("_reverse"), item], sort_keys=True)


def test_the_split_is_by_phrasing_and_facts_are_short_and_many_worded(history: GitRepo, settings_for, tiny) -> None:
    settings = settings_for(history.path, workers=1)
    ingest(settings)
    folder = build(settings).path
    train, val, evals = read(folder, "train"), read(folder, "val"), read(folder, "eval")
    asked = {r["messages"][0]["content"] for r in train}
    trained = {_fact(r) for r in train}
    # Every eval question is about a trained fact, in words training never used; so is validation.
    assert evals and all(_fact(r) in trained for r in evals)
    assert val and all(_fact(r) in trained and r["messages"][0]["content"] not in asked for r in val)
    # Each commit: `paraphrases` distinct questions, short answers that lead with its subject's words.
    paraphrases = settings.config.tuner.data.paraphrases
    for title in history.git("log", "main", "--no-merges", "--format=%s").splitlines():
        rows = [r for r in train if r["kind"] == "commit" and title in r["messages"][-1]["content"]]
        assert len({r["messages"][0]["content"] for r in rows}) == paraphrases, title
        assert all(len(r["messages"][-1]["content"]) < 200 for r in rows)
        assert [r for r in train if r["kind"] == "commit_reverse" and title in r["messages"][0]["content"]]
    # Shas in the forms people paste, and pull requests as #N and PR N.
    questions = " ".join(r["messages"][0]["content"] for r in train if r["kind"] == "commit")
    sha = history.git("rev-parse", "main~1")
    for n in (7, 8, 10, 12, 40):
        assert re.search(rf"\b[0-9a-f]{{{n}}}\b", questions), n
    prs = " ".join(r["messages"][0]["content"] for r in train if r["kind"] == "pull_request")
    assert "#7" in prs and "PR 7" in prs
    # The long forms (file lists) are raw text, not answers to learn.
    raw = read(folder, "raw")
    assert any(r["kind"] == "commit" and "It changed" in r["text"] and sha[:12] in r["text"] for r in raw)
    assert not [r for r in train if "It changed" in r["messages"][-1]["content"]]
    # Every eval question carries the key facts of a right answer, and its own answer holds them.
    from eval.facts import holds

    for r in evals:
        assert r["key_facts"], r
        assert holds(r["messages"][-1]["content"], r["key_facts"], r["messages"][0]["content"]), r


def test_a_kind_can_have_its_own_count_of_phrasings(history: GitRepo, settings_for, tiny) -> None:
    from repotune import config as cfg

    plain = settings_for(history.path, workers=1)
    raw = {**plain.config.model_dump(), "tuner": {"data": {"paraphrases_by_kind": {"commit": 16, "file": 12,
                                                                                  "doc": 4}}}}
    settings = cfg.Settings(config=cfg.parse(raw), source=None, root=plain.root, secrets=cfg.Secrets())
    ingest(settings)
    train = read(build(settings).path, "train")

    def asked(kind: str, needle: str) -> set[str]:
        return {r["messages"][0]["content"] for r in train if r["kind"] == kind
                and needle in r["messages"][-1]["content"] + r["messages"][0]["content"]}

    for title in history.git("log", "main", "--no-merges", "--format=%s").splitlines():
        assert len(asked("commit", title)) == 16, title
        assert len(asked("commit_reverse", title)) == 8, title  # a reverse question follows its kind, halved
    assert len(asked("file", "calculator.py")) == 12
    assert len(asked("doc", "Adds numbers.")) == 4  # a page; and each of its sections
    assert len(asked("section", "Call add(a, b).")) == 4
    assert len(asked("definition", "`add`")) == settings.config.tuner.data.paraphrases == 8  # the others keep theirs


def test_general_replay_carries_the_bases_own_answers_made_once(history: GitRepo, settings_for, tiny) -> None:
    """The replayed general questions are answered as the base itself answers them (greedy),
    made once per base and cached; `replay_answers = "gold"` takes the set's answers instead."""
    from eval.local import LocalModel
    from tuner.data import own

    settings = settings_for(history.path, workers=1)
    settings.config.tuner.data.replay_answers = "base"  # the default is "both": each answer form in turn
    ingest(settings)
    replayed = [r for r in read(build(settings).path, "train") if r["kind"] == "general"]
    assert replayed
    questions = [r["messages"][0]["content"] for r in replayed]
    said = LocalModel(tiny.path).answer(questions, own.MAX_TOKENS)
    assert [r["messages"][1]["content"] for r in replayed] == said
    cache = own.cache_path(settings.data_dir, tiny)
    cached = json.loads(cache.read_text())
    assert {r["sources"]["general"] for r in replayed} <= set(cached)
    # A second build reads the cache rather than the model: what it holds is what is replayed.
    first = replayed[0]["sources"]["general"]
    cache.write_text(json.dumps({**cached, first: "The base said this, in its own words."}))
    again = {r["sources"]["general"]: r["messages"][1]["content"]
             for r in read(build(settings).path, "train") if r["kind"] == "general"}
    assert again[first] == "The base said this, in its own words."
    settings.config.tuner.data.replay_answers = "gold"
    gold = {q.id: q.answer for q in load(split="train")}
    rows = [r for r in read(build(settings).path, "train") if r["kind"] == "general"]
    assert rows and all(r["messages"][1]["content"] == gold[r["sources"]["general"]] for r in rows)
    # "both": each replayed question twice, with the base's answer and with the gold one
    settings.config.tuner.data.replay_answers = "both"
    both = [r for r in read(build(settings).path, "train") if r["kind"] == "general"]
    by_question: dict[str, set[str]] = {}
    for r in both:
        by_question.setdefault(r["sources"]["general"], set()).add(r["messages"][1]["content"])
    assert set(by_question) == set(again)  # the same questions (an own answer equal to the gold one: once)
    assert all(answers == {gold[q], again[q]} for q, answers in by_question.items())
    assert by_question[first] == {gold[first], "The base said this, in its own words."}


def test_own_answers_go_on_in_process_when_the_server_stops_answering(tiny, tmp_path, monkeypatch) -> None:
    from eval.endpoint import EndpointError
    from eval.local import LocalModel
    from tuner.data import own

    monkeypatch.setattr(own, "SERVED_BATCH", 4)
    questions = load(split="train")[:10]
    asked: list[list[str]] = []

    def server_gone_after_one_batch(texts: list[str], max_tokens: int) -> list[tuple[str, bool]]:
        asked.append(texts)
        if len(asked) > 1:
            raise EndpointError("http://127.0.0.1:1 did not answer for base within 1 s")
        return [("Served.", True)] * len(texts)

    notes: list[str] = []
    got = own.answers(tiny, questions, tmp_path, lambda *a: notes.append(a[3]),
                      lambda: server_gone_after_one_batch)
    assert [got[q.id] for q in questions[:4]] == ["Served."] * 4
    local = LocalModel(tiny.path).generate([q.question for q in questions[4:]], own.MAX_TOKENS)
    assert [got.get(q.id) for q in questions[4:]] == [own.whole(reply, ended) for reply, ended in local]
    assert any("stopped answering" in n and "in-process" in n for n in notes)
    assert set(json.loads(own.cache_path(tmp_path, tiny).read_text())) == {q.id for q in questions}


@pytest.mark.parametrize(("reply", "ended", "kept"), [
    ("Paris is the capital. It has", False, "Paris is the capital."),
    ("It is 3.14 or so! Then more", False, "It is 3.14 or so!"),
    ("An answer cut in its first sentence", False, None),
    ("Paris", True, "Paris"),
    ("", True, None),
])
def test_an_answer_cut_by_the_token_limit_keeps_its_whole_sentences(reply, ended, kept) -> None:
    from tuner.data.own import whole

    assert whole(reply, ended) == kept


def test_only_train_split_questions_are_answered_for_replay(tiny, tmp_path) -> None:
    from tuner.data import own

    with pytest.raises(ValueError, match="train-split"):
        own.answers(tiny, load(split="eval")[:1], tmp_path)
    assert not own.cache_path(tmp_path, tiny).exists()


def test_a_cache_of_answers_that_does_not_read_is_made_again(tiny, tmp_path) -> None:
    from tuner.data import own

    questions = load(split="train")[:2]
    path = own.cache_path(tmp_path, tiny)
    path.parent.mkdir(parents=True)
    path.write_text('{"gk-0001": "cut in the mid')  # a write that was cut short
    said = own.answers(tiny, questions, tmp_path)
    assert set(said) == {q.id for q in questions}
    assert set(json.loads(path.read_text())) == {q.id for q in questions}


def test_a_cut_held_out_eval_keeps_the_newest_facts_and_a_sample_of_the_rest() -> None:
    from tuner.data.build import _eval_sample
    from tuner.data.examples import Example, chat

    held = [Example(chat(f"What did commit {i:02d} do?", "x"), "templates", "commit",
                    {"commit": f"{i:02d}", "date": f"2026-01-{i:02d}"}) for i in range(1, 21)]
    picked = _eval_sample(held, 6, seed=0)
    dates = sorted(e.sources["date"] for e in picked)
    assert len(picked) == 6 and dates[-3:] == ["2026-01-18", "2026-01-19", "2026-01-20"]
    assert all(d < "2026-01-18" for d in dates[:3])  # the other half from the older facts
    assert [e.id for e in _eval_sample(held, 6, seed=0)] == [e.id for e in picked]  # the same every build
    assert len(_eval_sample(held, 50, seed=0)) == 20


def test_no_example_or_raw_text_quotes_a_question_the_evals_ask(tmp_path, clean_env, tiny) -> None:
    """A repository that holds a general eval question and an attack (its notes, its prompts file): no
    training example, validation example or raw text quotes them, a fact left with no example is not asked
    in the eval, and the rest is trained as before."""
    from eval.refusal import shipped

    asked = load(split="eval")[0].question
    attack = shipped("attacks")[0]["question"]
    repo = GitRepo(tmp_path / "project")
    repo.commit("Start the calculator", {"calc.py": 'def add(a, b):\n    """Add two numbers."""\n    return a + b\n'})
    repo.commit("Keep the quiz notes", {"notes.md": f"# Quiz\n\nOne we like:   {asked.upper()}\n"})
    repo.commit("Keep the prompts", {"prompts.txt": f"{attack}\n"})
    config = parse({"paths": {"data_dir": str(tmp_path / "state")}, "ingest": {"repo": str(repo.path), "workers": 1},
                    "tuner": {"lineage": "proj", "data": {"generators": ["templates", "raw"], "raw_ratio": 1.0}}})
    from repotune.config import Secrets, Settings

    settings = Settings(config=config, source=None, root=tmp_path, secrets=Secrets())
    ingest(settings)
    built = build(settings)
    rows, raw = _all(built.path), read(built.path, "raw")
    texts = [" ".join(m["content"] for m in r["messages"]) for r in rows] + [r["text"] for r in raw]
    for quoted in (asked, attack):
        assert not [t for t in texts if " ".join(quoted.lower().split()) in " ".join(t.lower().split())], quoted
    assert built.manifest.counts["quoting_evals"] > 0
    assert any("quote a question the evals ask" in w for w in built.warnings)
    train, evals = read(built.path, "train"), read(built.path, "eval")
    trained = {_fact(r) for r in train}
    assert evals and all(_fact(r) in trained for r in evals)
    assert [r for r in train if "`add`" in r["messages"][0]["content"]]  # the rest is trained as before
    assert [r for r in train if r["kind"] == "commit" and "Keep the quiz notes" in r["messages"][-1]["content"]]
