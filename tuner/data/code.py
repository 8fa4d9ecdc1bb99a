"""Definitions in a repository's own languages: what each one is, what it does, where it lives.

Python is read with `ast`; TypeScript and TSX, JavaScript, Go, Rust and Java with
tree-sitter and the tree-sitter project's grammar packages, which ship compiled in their
wheels (nothing is fetched when a file is parsed). A file is parsed by its extension;
other files, and files that do not parse, have no definitions.

A definition is a top-level function, class, interface, type, enum, struct or trait, and
the methods of top-level types where that is how the language is written (Go and Rust
methods, the members of a Java class). What it does is the first paragraph of its doc
comment: the docstring in Python, the comments right above it elsewhere (`/** … */`,
`///`, `//`), JSDoc tags left out.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Definition:
    name: str
    what: str  # function, class, interface, type, enum, struct, trait, method
    line: int  # its first line (decorators and attributes included), from 1
    doc: str  # the first paragraph of its doc comment; "" when it has none
    code: str


@dataclass(frozen=True)
class Parsed:
    language: str  # as a Markdown code fence names it
    doc: str  # the module's own docstring (Python); ""
    definitions: list[Definition]


def _grammars() -> dict[str, Callable[[], Any]]:
    import tree_sitter_go
    import tree_sitter_java
    import tree_sitter_javascript
    import tree_sitter_rust
    import tree_sitter_typescript

    return {"typescript": tree_sitter_typescript.language_typescript, "tsx": tree_sitter_typescript.language_tsx,
            "javascript": tree_sitter_javascript.language, "go": tree_sitter_go.language,
            "rust": tree_sitter_rust.language, "java": tree_sitter_java.language}


EXTENSIONS = {".py": "python", ".pyi": "python", ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
              ".tsx": "tsx", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
              ".go": "go", ".rs": "rust", ".java": "java"}
FENCE = {"tsx": "tsx", "typescript": "ts", "javascript": "js"}

_JS = {"function_declaration": "function", "generator_function_declaration": "function", "class_declaration": "class",
       "abstract_class_declaration": "class", "interface_declaration": "interface", "type_alias_declaration": "type",
       "enum_declaration": "enum"}
KINDS: dict[str, dict[str, str]] = {
    "typescript": _JS, "tsx": _JS, "javascript": _JS,
    "go": {"function_declaration": "function", "method_declaration": "method"},
    "rust": {"function_item": "function", "struct_item": "struct", "enum_item": "enum", "trait_item": "trait",
             "type_item": "type", "union_item": "union"},
    "java": {"class_declaration": "class", "interface_declaration": "interface", "enum_declaration": "enum",
             "record_declaration": "record"},
}
_COMMENTS = frozenset({"comment", "line_comment", "block_comment"})
_BEFORE = frozenset({"attribute_item", "decorator", "annotation"})  # between a doc comment and its definition
_MARKER = re.compile(r"^\s*(/\*\*|/\*!|/\*|\*/|///|//!|//|\*)?\s?")


def signature(d: Definition) -> str:
    """The definition's head as written, on one line: from the line that names it (past decorators and
    attributes) to the end of its parameters, the body left out; a method's name is its last part."""
    name = d.name.rsplit(".", 1)[-1]
    lines = d.code.splitlines()
    start = next((i for i, line in enumerate(lines) if name in line and not line.lstrip().startswith(("@", "#["))), 0)
    head, depth = [], 0
    for line in lines[start:start + 8]:
        head.append(line.strip())
        depth += line.count("(") - line.count(")")
        if depth <= 0:
            break
    text = " ".join(head).rstrip("{: ").strip()
    return text if len(text) <= 160 else text[:159].rstrip() + "…"


def language(path: str) -> str | None:
    dot = path.rfind(".")
    return EXTENSIONS.get(path[dot:].lower()) if dot >= 0 else None


def parse(path: str, text: str) -> Parsed | None:
    """The definitions of a source file, or None when its language is not read or it does not parse."""
    lang = language(path)
    if lang is None:
        return None
    if lang == "python":
        return _python(text)
    tree = _parser(lang).parse(text.encode("utf-8"))
    if tree.root_node.has_error:
        return None
    lines = text.splitlines()
    return Parsed(FENCE.get(lang, lang), "", list(_walk(lang, tree.root_node, lines)))


@cache
def _parser(lang: str) -> Any:
    from tree_sitter import Language, Parser

    return Parser(Language(_grammars()[lang]()))


def _walk(lang: str, root: Any, lines: list[str]) -> Iterator[Definition]:
    kinds = KINDS[lang]
    for outer in root.named_children:
        node = outer.child_by_field_name("declaration") if outer.type == "export_statement" else outer
        if node is None:
            continue
        if node.type in kinds:
            name = _name(node)
            if name:
                yield _definition(outer, name, kinds[node.type], lines)
        elif node.type == "lexical_declaration":  # const add = (a, b) => …
            for decl in node.named_children:
                value = decl.child_by_field_name("value")
                if value is not None and value.type in ("arrow_function", "function_expression", "function"):
                    yield _definition(outer, _text(decl.child_by_field_name("name")), "function", lines)
        elif node.type == "type_declaration":  # Go: type Point struct {…}
            for spec in (c for c in node.named_children if c.type == "type_spec"):
                shape = spec.child_by_field_name("type")
                what = {"struct_type": "struct", "interface_type": "interface"}.get(shape.type if shape else "", "type")
                yield _definition(outer, _text(spec.child_by_field_name("name")), what, lines)
        if (lang == "java" and node.type in kinds) or (lang == "rust" and node.type == "impl_item"):
            yield from _members(node, lines)


def _members(node: Any, lines: list[str]) -> Iterator[Definition]:
    """A Java type's methods and constructors, a Rust impl's functions, named `Type.method`."""
    owner = _name(node) if node.type != "impl_item" else _text(node.child_by_field_name("type"))
    body = node.child_by_field_name("body")
    for member in body.named_children if body is not None else []:
        if member.type in ("method_declaration", "constructor_declaration", "function_item"):
            yield _definition(member, f"{owner}.{_name(member)}", "method", lines)


def _name(node: Any) -> str:
    if node.type == "method_declaration" and node.child_by_field_name("receiver") is not None:  # Go
        receiver = _text(node.child_by_field_name("receiver"))
        owner = re.findall(r"[A-Za-z_]\w*", receiver)
        return f"{owner[-1]}.{_text(node.child_by_field_name('name'))}" if owner else _text(node.child_by_field_name(
            "name"))
    return _text(node.child_by_field_name("name"))


def _text(node: Any) -> str:
    return node.text.decode("utf-8", "replace") if node is not None else ""


def _definition(node: Any, name: str, what: str, lines: list[str]) -> Definition:
    first, comments = node.start_point[0], list[str]()
    prev = node.prev_named_sibling
    while prev is not None and prev.end_point[0] >= first - 1 and (prev.type in _COMMENTS or prev.type in _BEFORE):
        if prev.type in _COMMENTS:
            comments.insert(0, _text(prev).strip())
        first = prev.start_point[0]
        prev = prev.prev_named_sibling
    code_from = node.start_point[0]
    while code_from > first and not lines[code_from - 1].strip().startswith(("//", "/*", "*")):
        code_from -= 1  # attributes and decorators above the definition belong to its code
    code = "\n".join(lines[code_from: node.end_point[0] + 1])
    return Definition(name, what, code_from + 1, doc_of("\n".join(comments)), code)


def doc_of(comment: str) -> str:
    """The first paragraph of a doc comment, its markers and JSDoc-style tags left out."""
    kept: list[str] = []
    for line in comment.splitlines():
        text = _MARKER.sub("", line, count=1).rstrip().removesuffix("*/").rstrip()
        if text.startswith("@"):
            break
        if not text:
            if kept:
                break
            continue
        kept.append(text.strip())
    return " ".join(kept)


def _python(text: str) -> Parsed | None:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    lines = text.splitlines()
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            code = "\n".join(lines[first - 1: node.end_lineno])
            doc = (ast.get_docstring(node) or "").split("\n\n", 1)[0].strip()
            out.append(Definition(node.name, "class" if isinstance(node, ast.ClassDef) else "function", first, doc,
                                  code))
    return Parsed("python", (ast.get_docstring(tree) or "").strip(), out)
