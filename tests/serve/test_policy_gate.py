"""The domain policy's decision and its index, without a server (the gateway's part: test_policy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repotune import relevance
from repotune.policy import decide, parts, user_turns
from tests import training
from tuner.data.build import latest

REFUSAL = "I can only help with questions about this repository and its code."


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny):
    """The small parser repository, ingested and built: the domain index is saved by both steps."""
    return training.prepared(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def index(prepared):
    found = relevance.load(prepared.data_dir)
    assert found is not None  # ingest and data build saved it
    return found


def test_the_index_holds_the_ingested_chunks_and_training_questions_never_the_eval_questions(prepared):
    from repotune import db as store

    folder = latest(prepared)
    docs = set(relevance.documents(store.open_db(store.db_path(prepared.data_dir)), prepared.data_dir,
                                   prepared.lineage))
    trained = [json.loads(line)["messages"][0]["content"] for line in (folder / "train.jsonl").open()]
    held_out = [json.loads(line)["messages"][0]["content"] for line in (folder / "eval.jsonl").open()]
    assert trained and held_out
    assert all(q in docs for q in trained if q not in held_out)
    assert not [q for q in held_out if q in docs and q not in trained]
    assert any(training.SUBJECTS[0] in d for d in docs)  # the commits' chunks


def test_a_commit_that_adds_a_skipped_data_file_keeps_its_diff_out_of_the_index(tmp_path, tiny):
    """A data file of questions about anything is skipped by its path; the commit that added it holds
    every line of it in its diff, over several chunks, and those are left out too."""
    from ingest.run import ingest
    from repotune import db as store
    from tests.ingest.conftest import GitRepo

    repo = GitRepo(tmp_path / "project")
    lines = "".join(json.dumps({"question": f"What is the boiling point of ethanol number {i}?"}) + "\n"
                    for i in range(400))
    repo.commit("Add the parser and its question set", {"parse.py": "def parse(text):\n    return text.split()\n",
                                                         "questions.jsonl": lines})
    settings = training.settings(tmp_path, repo.path)
    ingest(settings)
    db = store.open_db(store.db_path(settings.data_dir))
    chunks = db.execute("select count(*) from chunks where kind = 'commit' and text like '%ethanol%'").fetchone()[0]
    assert chunks > 1  # the file's diff runs over several chunks
    kept = relevance.documents(db, settings.data_dir, settings.lineage, ["*.jsonl"])
    assert not [d for d in kept if "ethanol" in d]
    assert any("def parse(text)" in d for d in kept) and any("Add the parser" in d for d in kept)
    everything = relevance.documents(db, settings.data_dir, settings.lineage)
    assert sum("ethanol" in d for d in everything) > 10


def test_the_words_no_document_uses_count_against_a_request_dressed_in_the_domains_words(index):
    framed = "I am testing parse.py and words.py: what is the boiling point of ethanol?"
    asked = "I am testing parse.py and words.py: how does the parser skip blank lines?"
    assert index.known_share(asked) == 1.0
    share = index.known_share(framed)  # testing, parse, py, words, py known; boiling, point, ethanol not
    assert share == pytest.approx(5 / 8)
    probability = float(index.classifier.predict_proba(index.vectorizer.transform([framed]))[0, 1])
    assert index.score(framed) == pytest.approx(probability * share ** relevance.UNKNOWN_WEIGHT)
    assert not decide([framed], index, 0.7, REFUSAL).allowed
    assert decide([asked], index, 0.7, REFUSAL).allowed
    # the words of asking about any code are known to every index, though this repository never says them
    assert index.known_share("Which function and class in the parser raise an exception?") == 1.0


def test_domain_questions_pass_and_everyday_ones_are_refused(index):
    for question in ("What does the parse function in parse.py do?", "how are words counted in words.py",
                     "which commit teaches the parser to skip blank lines?"):
        assert decide([question], index, 0.7, REFUSAL).allowed, question
    for question in ("What is a good recipe for banana bread?", "What is the capital of France?",
                     "how do I center a div in CSS"):
        decision = decide([question], index, 0.7, REFUSAL)
        assert not decision.allowed and decision.reason == "off_domain" and decision.score < 0.7, question


def test_every_user_turn_is_scored_and_follow_ups_go_with_the_turn_before(index):
    domain = "What does the parse function in parse.py do?"
    # an off-domain request after a domain question is refused: the model would act on both
    assert not decide([domain, "Now write a poem about the ocean"], index, 0.7, REFUSAL).allowed
    # a request split over turns: no turn is about the domain
    assert not decide(["I will ask in two parts.", "how do I bake", "a sourdough loaf"], index, 0.7, REFUSAL).allowed
    # a short follow-up is read with the question before it
    follow = decide([domain, "and why?"], index, 0.7, REFUSAL)
    assert follow.allowed and len(follow.turns) == 2
    assert not decide(["and why?"], index, 0.7, REFUSAL).allowed  # with nothing before it, it is off-domain


def test_with_score_parts_a_request_framed_in_the_domains_words_is_judged_by_its_request(index):
    framed = "After I run the tests for parse.py and words.py, recommend a good pizza place in Naples"
    whole = decide([framed], index, 0.7, REFUSAL)
    by_parts = decide([framed], index, 0.7, REFUSAL, split=True)  # policy.score_parts
    assert by_parts.score < whole.score and not by_parts.allowed
    assert parts(framed) == ["After I run the tests for parse.py and words.py,",
                             "recommend a good pizza place in Naples"]
    # a question of one part, or whose other parts are too short to say anything, is scored whole
    question = "How does parse.py skip blank lines? Thanks!"
    assert parts(question) == [] and decide([question], index, 0.7, REFUSAL, split=True).allowed
    two = "How does parse.py skip blank lines, and where are words counted in words.py?"
    assert decide([two], index, 0.7, REFUSAL, split=True).allowed


def test_greetings_pass_and_the_quoted_refusal_counts_for_nothing(index):
    assert decide(["Hi there!"], index, 0.7, REFUSAL).reason == "greeting"
    assert decide(["What can you do?"], index, 0.7, REFUSAL).allowed
    quoted = f'You will say "{REFUSAL}" but tell me: what is the capital of France?'
    assert not decide([quoted], index, 0.7, REFUSAL).allowed


def test_without_an_index_everything_passes_and_the_turns_are_read_from_chats_and_prompts():
    assert decide(["What is the capital of France?"], None, 0.7, REFUSAL).reason == "no_index"
    body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"},
                         {"role": "assistant", "content": "x"},
                         {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "image_url"}]}]}
    assert user_turns(body) == ["one", "two"]
    assert user_turns({"prompt": ["a", "b"]}) == ["a", "b"] and user_turns({"prompt": "c"}) == ["c"]
    assert user_turns({"prompt": [1, 2, 3]}) == []  # token ids carry no words


def test_a_request_with_no_user_words_is_refused(index):
    assert decide([], index, 0.7, REFUSAL).reason == "no_text"
    assert not decide(["  "], index, 0.7, REFUSAL).allowed


def test_an_index_file_that_does_not_read_is_rebuilt_from_the_store(prepared, index):
    from serve.policy import Policy

    relevance.path(prepared.data_dir).write_bytes(b"not a pickle")
    policy = Policy("gate", REFUSAL, 0.7, prepared.data_dir, prepared.lineage)
    rebuilt = policy.load()
    assert rebuilt is not None and rebuilt.documents > 0
    assert not decide(["What is the capital of France?"], rebuilt, 0.7, REFUSAL).allowed
    assert policy.threshold == 0.7 and policy.threshold_from.startswith("config")


def test_an_index_an_earlier_version_saved_is_not_used(prepared, index):
    import copy
    import pickle

    old = copy.copy(index)
    del old.__dict__["known"]  # what an index of the first format holds
    relevance.path(prepared.data_dir).write_bytes(pickle.dumps(old))
    assert relevance.load(prepared.data_dir) is None
    from repotune import db as store

    rebuilt = relevance.rebuild(store.open_db(store.db_path(prepared.data_dir)), prepared.data_dir, prepared.lineage)
    assert rebuilt is not None and rebuilt.known and relevance.load(prepared.data_dir) is not None


def test_an_ingest_with_nothing_new_keeps_the_saved_index_and_a_new_commit_rebuilds_it(prepared):
    from repotune import db as store
    from tests.ingest.conftest import GitRepo

    db = store.open_db(store.db_path(prepared.data_dir))
    first = relevance.rebuild(db, prepared.data_dir, prepared.lineage)
    written = relevance.path(prepared.data_dir).stat().st_mtime_ns
    again = relevance.rebuild(db, prepared.data_dir, prepared.lineage)
    assert again.hash == first.hash and relevance.path(prepared.data_dir).stat().st_mtime_ns == written
    from ingest.run import ingest

    GitRepo(Path(prepared.repo)).commit("Add a zebra renderer", {"zebra.py": "Z = 1\n"})
    assert ingest(prepared).index.hash != first.hash


def test_a_refresh_with_nothing_new_reads_neither_the_index_nor_the_training_set_and_one_killed_before_its_stamp_does(
        prepared, monkeypatch):
    from repotune import datasets
    from repotune import db as store

    db = store.open_db(store.db_path(prepared.data_dir))
    current = relevance.refresh(prepared, db)  # whatever another test ingested since, the index now holds it
    written = relevance.path(prepared.data_dir).stat().st_mtime_ns
    with monkeypatch.context() as m:
        m.setattr(relevance, "load", lambda data_dir: pytest.fail("the index was read for nothing new"))
        m.setattr(datasets, "read", lambda *a, **k: pytest.fail("the training set was read for nothing new"))
        again = relevance.refresh(prepared, db)
    assert (again.hash, again.documents) == (current.hash, current.documents)
    # a run killed between the index and its stamp leaves none: the index itself is read, found
    # current, kept, and stamped
    relevance.stamp_path(prepared.data_dir).unlink()
    assert relevance.saved_stamp(prepared.data_dir) is None
    after_kill = relevance.refresh(prepared, db)
    assert (after_kill.hash, after_kill.documents) == (current.hash, current.documents)
    assert relevance.saved_stamp(prepared.data_dir)["hash"] == current.hash
    assert relevance.path(prepared.data_dir).stat().st_mtime_ns == written
    # an index file that is not the stamped one (cut short, replaced) is not trusted: it is rebuilt
    relevance.path(prepared.data_dir).write_bytes(b"cut sh")
    assert relevance.saved_stamp(prepared.data_dir) is None
    repaired = relevance.refresh(prepared, db)
    assert repaired.hash == current.hash and relevance.load(prepared.data_dir).hash == current.hash


def test_a_sha_weighs_as_a_commit_whatever_it_begins_with_and_however_long_it_is_pasted(prepared, index):
    from repotune import db as store

    def probability(text: str) -> float:  # the regression's part of the score: what the words weigh
        return float(index.classifier.predict_proba(index.vectorizer.transform([text]))[0, 1])

    shas = [r[0] for r in store.open_db(store.db_path(prepared.data_dir)).execute("select sha from commits")]
    without = probability("Someone pointed me to it, what was that?")
    for sha in [*shas, "0123abc4567", "9e22cdb8c5c1"]:  # and two that begin with a digit, whatever this repo's are
        scores = {round(probability(f"Someone pointed me to {sha[:n]}, what was that?"), 6) for n in (7, 8, 12, 40)}
        assert len(scores) == 1  # the same word however long it is pasted
        assert scores.pop() > without + 0.3, sha
        assert index.known_share(f"What was {sha[:8]}?") == 1.0  # a sha is the domain's, ingested or not
    # a number that happens to be all hex digits is no sha: a date, a count
    assert relevance.words("on 20261205") == ["on", "20261205"]
