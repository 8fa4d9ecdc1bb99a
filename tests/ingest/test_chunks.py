"""Chunk cutting: token counts equal to the tokenizer's, Python cut where `ast` cuts it."""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ingest.chunks import Tokens, _python_starts
from repotune.models import tokenizer_path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Llama 3's split (Qwen 2's differs only in \p{N} instead of \p{N}{1,3}).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _lines() -> list[str]:
    """Every distinct line of a few standard-library modules, and lines made to be awkward."""
    lines: dict[str, None] = {}
    for name in ("argparse.py", "textwrap.py", "difflib.py", "json/decoder.py", "email/_header_value_parser.py"):
        lines.update(dict.fromkeys((STDLIB / name).read_text(encoding="utf-8").splitlines(keepends=True)))
    odd = [
        "Ünïcödé naïve café — 東京 🙂 ½ ² Ⅻ ٣ x\u200by\n", "  \t  trailing   \n", "\r\n", "\t\t\n", " \n",
        "\x1c\x1d\x1e\n", "it's we're they've I'd you'll I'M DON'T\n", "0x1F 3.14e-10 1234567890 12,345.67\n",
        "a" * 3000 + "\n", "<|endoftext|> and <|im_start|>user\n", "@@ -1,7 +1,8 @@ def f(x):\n",
        "+\tprint('tab')\n", "\u00a0nbsp\u2003em\n",
    ]
    lines.update(dict.fromkeys(odd))
    return list(lines)


def _reference(file: Path, lines: list[str]) -> list[int]:
    fast = Tokenizer.from_file(str(file))
    return [len(fast.encode(line, add_special_tokens=False).ids) for line in lines]


def _trained(folder: Path, pre: pre_tokenizers.PreTokenizer, normalizer: normalizers.Normalizer | None = None,
             **bpe: object) -> Path:
    """A byte-level BPE tokenizer trained here on the standard library, saved as tokenizer.json."""
    tok = Tokenizer(models.BPE(**bpe))  # type: ignore[arg-type]
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    if normalizer is not None:
        tok.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(STDLIB / "argparse.py"), str(STDLIB / "difflib.py")], trainer)
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_counts_are_the_builtin_tokenizers_own() -> None:
    folder = tokenizer_path("builtin:tiny")
    tokens = Tokens(folder)
    assert tokens.words is not None  # the fast path is the one measured
    lines = _lines()
    assert tokens.lines(lines) == _reference(folder / "tokenizer.json", lines)


@pytest.mark.parametrize("kind", ["llama3-split", "gpt2-bytelevel", "ignore-merges", "other-classes"])
def test_counts_are_exact_for_other_byte_level_tokenizers(tmp_path: Path, kind: str) -> None:
    # "other-classes" splits by letter case: classes with no ASCII form here, so every line
    # goes through the `regex` module; and its pattern leaves text unmatched (letters of
    # no case, spaces), which the tokenizer keeps as pieces of their own
    pattern = r"\p{Lu}?\p{Ll}+|\p{N}+| ?[^\s\p{L}\p{N}]+" if kind == "other-classes" else LLAMA3_SPLIT
    split = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False) if kind == "gpt2-bytelevel" else split
    folder = _trained(tmp_path / kind, pre, ignore_merges=kind == "ignore-merges")
    tokens = Tokens(folder)
    assert tokens.words is not None
    lines = _lines()
    assert tokens.lines(lines) == _reference(folder / "tokenizer.json", lines)


def test_a_tokenizer_it_cannot_split_itself_is_asked_every_line(tmp_path: Path) -> None:
    folder = _trained(tmp_path / "nfkc", pre_tokenizers.ByteLevel(add_prefix_space=False), normalizers.NFKC())
    spec = json.loads((folder / "tokenizer.json").read_text())
    assert spec["normalizer"]["type"] == "NFKC"
    tokens = Tokens(folder)
    assert tokens.words is None
    lines = _lines()
    assert tokens.lines(lines) == _reference(folder / "tokenizer.json", lines)


def test_a_split_that_disagrees_with_the_tokenizer_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.chunks

    folder = tokenizer_path("builtin:tiny")
    monkeypatch.setattr(ingest.chunks, "_GPT2_SPLIT", r"\S+|\s+")  # words with their punctuation
    tokens = Tokens(folder)
    assert tokens.words is None  # its check on a sample failed: the tokenizer counts instead
    lines = _lines()
    assert tokens.lines(lines) == _reference(folder / "tokenizer.json", lines)


def _ast_starts(text: str) -> list[int]:
    tree = ast.parse(text)
    return sorted({min([n.lineno, *(d.lineno for d in getattr(n, "decorator_list", []))]) - 1 for n in tree.body})


def test_python_is_cut_where_ast_starts_its_statements() -> None:
    modules = sorted(STDLIB.glob("*.py"))
    assert len(modules) > 100
    for module in modules:
        text = module.read_text(encoding="utf-8", errors="replace")
        try:
            expected = _ast_starts(text)
        except SyntaxError:  # a few test fixtures in the standard library
            continue
        assert _python_starts(text) == expected, module


TRICKY = '''\
"""Module docstring.
def not_a_function():
class NotAClass:
"""
import os  # a comment with a quote ' and a bracket (
x = [
1, 2,
]
@decorator(
    arg=")",
)
# a comment between a decorator and its function
@other
def f(a='#', b="\\"(", c=\'\'\'
def inside_a_string():
\'\'\'):
    return a
if x:
    pass
elif y:
    pass
else:
    pass
try:
    pass
except ValueError:
    pass
finally:
    pass
y = 1 + \\
2
s = f"{x!r} {{not a bracket"; t = 2
class C(
    Base,
): pass
'''


def test_python_starts_handle_strings_comments_brackets_and_clauses() -> None:
    assert _python_starts(TRICKY) == _ast_starts(TRICKY)


def test_python_that_does_not_parse_is_still_cut() -> None:
    text = "def f(:\n    pass\n\ndef g():\n    return 1\n"
    with pytest.raises(SyntaxError):
        ast.parse(text)
    assert _python_starts(text) == [0, 3]

