"""Does an adapter know a definition's doc comment, when its free answer stops before it?

A learning run (`benchmarks.learning`) scores a definition right when the answer names its
path and half of its doc comment's words. Its adapters learn the path and stop there. This
probe asks the documented held-out definitions again, with the start of a trained answer
form already written into the reply ("`name` (path):", "`name` lives in path."), and lets
the model go on greedily: when the continuation then holds the doc's words, the fact is
stored and the free answer's form is what hides it; when not, the doc was not learned. The
base is asked the same way (its continuation is the control: it never saw the doc).
`--kind commit_reverse` asks the reverse questions (a commit's subject → its sha) the same
way, begun "Commit" and "That is".

    python -m benchmarks.prefix_probe /tmp/learning-XXXX benchmarks/learning-….json [--out …]

(the run's folder, and the figures it wrote: the questions it scored).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from benchmarks.learning import ROOT

FORMS = {"definition": {"name (path):": "`{name}` ({path}):", "name lives in path.": "`{name}` lives in {path}."},
         "commit_reverse": {"Commit": "Commit", "That is": "That is"}}


def _questions(folder: Path, asked: set[str], kind: str = "definition") -> list[dict[str, Any]]:
    """The run's held-out questions of `kind` (those it asked); definitions: those whose key facts carry doc words."""
    from repotune import datasets

    data = datasets.find(folder / "state", "learn")
    rows = []
    for r in datasets.read(data, "eval"):
        question = r["messages"][0]["content"]
        if r["kind"] != kind or question not in asked:
            continue
        if kind != "definition":
            rows.append(r)
            continue
        name = re.search(r"`([^`]+)`", question) or re.search(r"what does (\S+) do", question)
        # every question names it, in backticks or as "what does NAME do"; one asked with its path (a name
        # several files define) has no path to say
        if r["key_facts"].get("words") and r["key_facts"].get("exact") and name:
            rows.append({**r, "name": name.group(1), "path": r["key_facts"]["exact"][0]})
    return rows


def _ask(model: Any, rows: list[dict[str, Any]], start: str | None) -> list[tuple[str, bool]]:
    """Greedy continuations after the reply's given start (asked in batches, as the learning run asks), and
    whether the whole reply holds the key facts."""
    from eval import facts

    begun = [start.format(**row) if start is not None else "" for row in rows]
    questions = [row["messages"][0]["content"] for row in rows]
    model.starts = dict(zip(questions, begun, strict=True))
    # The replies come back stripped, the space after the start with them: put it back.
    replies = [f"{b} {r}" if b else r for b, r in zip(begun, model.answer(questions), strict=True)]
    return [(reply, facts.holds(reply, row["key_facts"], q)) for reply, row, q in zip(replies, rows, questions,
                                                                                      strict=True)]


def _begun(base: Path, adapter: Path | None) -> Any:
    """The learning run's in-process model, its reply to each question already begun with `starts[question]`."""
    from eval.local import LocalModel

    class Begun(LocalModel):
        starts: dict[str, str]

        def prompt(self, question: str) -> str:
            return super().prompt(question) + self.starts.get(question, "")

    model = Begun(base, adapter)
    model.starts = {}
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", help="a benchmarks.learning run folder (its state/ and work/adapter)")
    ap.add_argument("figures", help="the run's figures (benchmarks/learning-….json): the questions it scored")
    ap.add_argument("--kind", choices=tuple(FORMS), default="definition")
    ap.add_argument("--base", default="builtin:smol")
    ap.add_argument("--out", default="", help="default: benchmarks/prefix-probe[-KIND].json")
    a = ap.parse_args()

    from repotune import models

    folder = Path(a.folder)
    asked = {a[1] for point in json.loads(Path(a.figures).read_text())["points"] for a in point.get("answers", [])}
    rows = _questions(folder, asked, a.kind)
    base = models.resolve(a.base).path
    result: dict[str, Any] = {"base": a.base, "folder": str(folder), "kind": a.kind, "asked": len(rows), "scores": {},
                              "answers": {}}
    for who, adapter in (("base", None), ("adapter", folder / "work" / "adapter")):
        model = _begun(base, adapter)
        for form, start in {"free answer": None, **FORMS[a.kind]}.items():
            got = _ask(model, rows, start)
            result["scores"][f"{who}, {form}"] = [sum(ok for _, ok in got), len(got)]
            result["answers"][f"{who}, {form}"] = [[r["messages"][0]["content"], r["messages"][1]["content"], reply, ok]
                                                   for r, (reply, ok) in zip(rows, got, strict=True)]
            print(who, form, result["scores"][f"{who}, {form}"], flush=True)
    suffix = "" if a.kind == "definition" else f"-{a.kind.replace('_', '-')}"
    Path(a.out or ROOT / "benchmarks" / f"prefix-probe{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
