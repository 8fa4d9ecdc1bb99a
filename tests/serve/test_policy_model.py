"""`policy.mode = "model"` through the gateway: the model's own refusal is cut to exactly the
refusal text, streamed and not, and counted; other answers pass as the engine gave them; the
admin key gets the model's reply untouched. A real `repotune serve` on builtin:tiny, the
official openai client.

builtin:tiny has no trained refusal, so the refusal text is set to the first words of what it
answers to one question of its general set ("Application Programming Interface"): a reply
that begins with the refusal and goes on, which must come back as the refusal alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import openai
import pytest

from eval.refusal import shipped
from tests import training
from tests.serve.conftest import ADMIN_KEY, API_KEY, Server, policy_server
from tests.serve.test_gateway import eventually, metrics, value

pytestmark = pytest.mark.vllm

REFUSAL = "Application Programming"
REFUSED = "What does API stand for?"  # builtin:tiny answers "Application Programming Interface"
ANSWERED = "What is 7 times 8?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("policy-model")
    repo = training.small_repo(root / "project")  # ingested: `eval refusal` reads the domain index too
    yield from policy_server(root, f'mode = "model"\nrefusal = "{REFUSAL}"\n', repo.path)


def ask(server: Server, question: str, key: str = API_KEY, **kw):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model="base", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=12, **kw)


def test_a_reply_that_begins_with_the_refusal_is_cut_to_exactly_it(server):
    untouched = ask(server, REFUSED, key=ADMIN_KEY).parse().choices[0]
    assert untouched.message.content.startswith(REFUSAL) and len(untouched.message.content) > len(REFUSAL)
    before = metrics(server.url)
    cut = ask(server, REFUSED)
    assert cut.headers["x-repotune-policy"] == "refused"
    choice = cut.parse().choices[0]
    assert choice.message.content == REFUSAL and choice.finish_reason == "stop"

    streamed = ask(server, REFUSED, stream=True)
    chunks = list(streamed.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REFUSAL
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    name, labels = "repotune_policy_requests_total", {"decision": "refused", "reason": "model_refused"}
    # a stream is counted once it has ended, just after its last bytes went out
    assert eventually(lambda: value(metrics(server.url), name, **labels) - value(before, name, **labels) == 2)


def test_other_replies_pass_as_the_engine_gave_them(server):
    direct = ask(server, ANSWERED, key=ADMIN_KEY).parse().choices[0].message.content
    checked = ask(server, ANSWERED)
    assert checked.headers.get("x-repotune-policy") is None
    assert checked.parse().choices[0].message.content == direct
    streamed = list(ask(server, ANSWERED, stream=True).parse())
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == direct


def test_eval_refusal_asks_the_model_and_counts_its_own_refusals(server, tmp_path):
    indomain = tmp_path / "indomain.jsonl"
    indomain.write_text(json.dumps({"question": REFUSED, "topic": "mine"}) + "\n"
                        + json.dumps({"question": ANSWERED, "topic": "mine"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "repotune.cli", "eval", "refusal", "--indomain", str(indomain),
                           "--json", "--config", str(server.config)], env=server.env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "base" and result["both_figures"] is None  # mode "model": no gate to combine
    mine = result["model_figures"]["by_group"]["in-domain mine"]
    assert (mine["hits"], mine["total"]) == (1, 2)  # the reply that begins with the refusal text, and only it
    attacks = result["model_figures"]["attacks"]
    assert attacks["total"] == len(shipped("attacks")) and attacks["rate"] > 0.9
