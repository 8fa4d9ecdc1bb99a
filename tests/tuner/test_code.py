"""Definitions in the repository's own languages, read by ast and tree-sitter."""

from __future__ import annotations

import pytest

from ingest.run import ingest
from tests.ingest.conftest import GitRepo
from tuner.data import code
from tuner.data.build import build, read

SOURCES = {
    "src/geometry.ts": '''import { Id } from "./id";

/**
 * Computes the area of a circle.
 * @param r the radius
 */
export function circleArea(r: number): number {
  return Math.PI * r * r;
}

// Anything with an area.
export interface Shape {
  area(): number;
}

/** Doubles a number. */
export const twice = (x: number): number => x * 2;

export default class Square implements Shape {
  constructor(private side: number) {}
  area() { return this.side * this.side; }
}

enum Color { Red, Green }
''',
    "web/view.tsx": '''/** Renders a greeting. */
export function Hello({ name }: { name: string }) {
  return <p>Hello {name}</p>;
}
''',
    "lib/util.js": '''/** Joins words with spaces. */
function joinWords(words) {
  return words.join(" ");
}
module.exports = { joinWords };
''',
    "geo/point.go": '''package geo

// Point is a place on the plane.
type Point struct {
\tX, Y float64
}

// Distance measures how far two points are apart.
func Distance(a, b Point) float64 {
\treturn 0
}

// Shift moves the point by dx.
func (p *Point) Shift(dx float64) {
\tp.X += dx
}
''',
    "src/lib.rs": '''/// Parses a config file.
/// Errors name the line.
#[inline]
pub fn parse_config(text: &str) -> usize {
    text.len()
}

/// A parsed setting.
pub struct Setting {
    pub key: String,
}

impl Setting {
    /// Makes an empty setting.
    pub fn empty() -> Setting {
        Setting { key: String::new() }
    }
}

pub trait Source {}
''',
    "app/Greeter.java": '''package app;

/** Greets people by name. */
public class Greeter {
    /**
     * Says hello to someone.
     * @param name who
     */
    public String hello(String name) {
        return "Hello " + name;
    }
}
''',
}

EXPECTED = {
    "src/geometry.ts": [("circleArea", "function", 7, "Computes the area of a circle."),
                        ("Shape", "interface", 12, "Anything with an area."), ("twice", "function", 17,
                                                                                 "Doubles a number."),
                        ("Square", "class", 19, ""), ("Color", "enum", 24, "")],
    "web/view.tsx": [("Hello", "function", 2, "Renders a greeting.")],
    "lib/util.js": [("joinWords", "function", 2, "Joins words with spaces.")],
    "geo/point.go": [("Point", "struct", 4, "Point is a place on the plane."),
                     ("Distance", "function", 9, "Distance measures how far two points are apart."),
                     ("Point.Shift", "method", 14, "Shift moves the point by dx.")],
    "src/lib.rs": [("parse_config", "function", 3, "Parses a config file. Errors name the line."),
                   ("Setting", "struct", 9, "A parsed setting."), ("Setting.empty", "method", 15,
                                                                   "Makes an empty setting."),
                   ("Source", "trait", 20, "")],
    "app/Greeter.java": [("Greeter", "class", 4, "Greets people by name."),
                         ("Greeter.hello", "method", 9, "Says hello to someone.")],
}


@pytest.mark.parametrize("path", sorted(SOURCES))
def test_each_language_gives_its_definitions_with_their_doc_comments(path: str) -> None:
    parsed = code.parse(path, SOURCES[path])
    assert parsed is not None
    assert [(d.name, d.what, d.line, d.doc) for d in parsed.definitions] == EXPECTED[path]
    lines = SOURCES[path].splitlines()
    for d in parsed.definitions:  # the code starts at the line given (attributes included) and holds the name
        assert d.code.splitlines()[0] == lines[d.line - 1] and d.name.split(".")[-1] in d.code


def test_what_is_not_read_or_does_not_parse_has_no_definitions() -> None:
    assert code.parse("notes.txt", "def f(): pass") is None
    assert code.parse("broken.ts", "export function (") is None
    assert code.parse("broken.py", "def f(:") is None
    python = code.parse("m.py", '"""The module."""\n\n@cache\ndef f():\n    """Does f.\n\n    More."""\n')
    assert python is not None and python.doc == "The module."
    assert [(d.name, d.line, d.doc) for d in python.definitions] == [("f", 3, "Does f.")]


def test_a_signature_is_the_definitions_head_on_one_line_without_its_decorators() -> None:
    source = '@app.command("run")\ndef run(\n    config: str,\n    force: bool = False,\n) -> None:\n    return None\n'
    parsed = code.parse("app.py", source)
    assert parsed is not None
    (run,) = parsed.definitions
    assert code.signature(run) == "def run( config: str, force: bool = False, ) -> None"
    # A method is found by its own name (`Greeter.toString` by `toString`), past its annotation.
    java = code.parse("app/Greeter.java", "public class Greeter {\n    @Override\n    public String toString() {\n"
                                          '        return "Greeter";\n    }\n}\n')
    assert java is not None
    method = next(d for d in java.definitions if d.name == "Greeter.toString")
    assert code.signature(method) == "public String toString()"


def test_a_typescript_repository_gets_definition_questions(tmp_path, settings_for, tiny) -> None:
    repo = GitRepo(tmp_path / "project")
    repo.commit("Add the sources", SOURCES)
    settings = settings_for(repo.path, workers=1)
    ingest(settings)
    folder = build(settings).path
    train = [r for r in read(folder, "train") if r["kind"] == "definition"]
    evals = [r for r in read(folder, "eval") if r["kind"] == "definition"]
    answers = [r["messages"][1]["content"] for r in train if "`circleArea`" in r["messages"][0]["content"]]
    assert len(answers) == 8 and all("Computes the area of a circle." in a and "src/geometry.ts" in a for a in answers)
    assert not [a for a in answers if "line" in a]  # the line moves with every edit above it: only the code says it
    # An undocumented definition is answered with its signature after its path, never the path alone.
    square = [r["messages"][1]["content"] for r in train if "`Square`" in r["messages"][0]["content"]]
    assert square and all("src/geometry.ts" in a and "`export default class Square implements Shape`" in a
                          for a in square), square
    # The file is asked about in as many phrasings, each answer naming what it defines; the held-out
    # phrasing is not among them.
    def of_file(r: dict) -> bool:
        return r["kind"] == "file" and "src/geometry.ts" in r["messages"][0]["content"]

    files = [r for r in read(folder, "train") if of_file(r)]
    assert len(files) == 8 and all("`circleArea`" in r["messages"][1]["content"] for r in files)
    held = [r for r in read(folder, "eval") if of_file(r)]
    assert held and held[0]["messages"][0]["content"] not in {r["messages"][0]["content"] for r in files}
    shown = [r["messages"][1]["content"] for r in read(folder, "train") if r["kind"] == "code"
             and "`circleArea`" in r["messages"][0]["content"]]
    assert shown and "src/geometry.ts, line 7." in shown[0] and "```ts\nexport function circleArea" in shown[0]
    go = next(r for r in evals if "`Point.Shift`" in r["messages"][0]["content"])
    assert go["key_facts"]["exact"] == ["geo/point.go"] and "moves" in go["key_facts"]["words"]
    asked = {r["messages"][0]["content"] for r in train + evals}
    for path, defs in EXPECTED.items():
        for name, *_ in defs:
            assert any(f"`{name}`" in q and path in q for q in asked), (path, name)


def test_a_name_two_files_define_is_asked_only_with_its_path(tmp_path, settings_for, tiny) -> None:
    repo = GitRepo(tmp_path / "project")
    repo.commit("Add two runners", {
        "jobs/nightly.py": 'def run(x):\n    """Start the nightly backup job."""\n    return x\n',
        "web/pages.py": 'def run(port):\n    """Serve the static pages on a port."""\n    return port\n\n\n'
                        'def render(page):\n    """Render one markdown page."""\n    return page\n'})
    settings = settings_for(repo.path, workers=1)
    ingest(settings)
    folder = build(settings).path

    def about(split: str, name: str) -> list[dict]:
        return [r for r in read(folder, split) if r["kind"] == "definition"
                and f"{name}" in r["messages"][0]["content"].replace("`", " ").split()]

    # "What is `run`?" has two right answers: no training or held-out question asks it without the path,
    # and each answer is its own file's.
    trained = about("train", "run")
    for path in ("jobs/nightly.py", "web/pages.py"):  # as many phrasings as any other definition
        assert len({r["messages"][0]["content"] for r in trained if path in r["messages"][0]["content"]}) == 8
    for r in trained:
        question, answer = (m["content"] for m in r["messages"])
        assert ("jobs/nightly.py" in question) != ("web/pages.py" in question)
        assert ("jobs/nightly.py" if "jobs/nightly.py" in question else "web/pages.py") in answer
    held = about("eval", "run")
    assert len(held) == 2 and all("exact" not in r["key_facts"] for r in held)
    # what it does, in words its question does not say ("nightly" is in the path): its own answer holds them,
    # the other file's does not
    from eval.facts import holds

    nightly = next(r for r in held if "jobs/nightly.py" in r["messages"][0]["content"])
    pages = next(r for r in held if "web/pages.py" in r["messages"][0]["content"])
    assert "backup" in nightly["key_facts"]["words"] and "nightly" not in nightly["key_facts"]["words"]
    question = nightly["messages"][0]["content"]
    assert holds(nightly["messages"][1]["content"], nightly["key_facts"], question)
    assert not holds(pages["messages"][1]["content"], nightly["key_facts"], question)
    assert not {r["messages"][0]["content"] for r in held} & {r["messages"][0]["content"] for r in trained}
    # a name one file defines is still asked without its path, and its path is what the answer must say
    assert any("web/pages.py" not in r["messages"][0]["content"] for r in about("train", "render"))
    assert [r["key_facts"]["exact"] for r in about("eval", "render")] == [["web/pages.py"]]
