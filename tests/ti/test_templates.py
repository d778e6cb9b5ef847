"""Prompt templates: listing, reading, resolving, rendering, and the shipped files."""

from pathlib import Path

import pytest

from ti.errors import TIError
from ti.templates import list_templates, read_template, render_prompt, resolve_template

SHIPPED_TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "textual_inversion_templates"


@pytest.fixture
def templates_dir(tmp_path):
    (tmp_path / "style.txt").write_text("a [name] painting\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("b\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a template\n", encoding="utf-8")
    (tmp_path / "more" / "deeper").mkdir(parents=True)
    (tmp_path / "more" / "extra.txt").write_text("extra [filewords]\n", encoding="utf-8")
    (tmp_path / "more" / "deeper" / "style.txt").write_text("shadowed\n", encoding="utf-8")
    (tmp_path / "more" / "deeper" / "a.TXT").write_text("upper-case suffix\n", encoding="utf-8")
    return tmp_path


def test_list_templates_is_recursive_sorted_and_keyed_by_file_name(templates_dir):
    templates = list_templates(templates_dir)
    assert list(templates) == ["a.TXT", "b.txt", "extra.txt", "style.txt"]
    assert templates["extra.txt"] == templates_dir / "more" / "extra.txt"
    # the shallower of two same-named files wins
    assert templates["style.txt"] == templates_dir / "style.txt"


def test_list_templates_refuses_a_missing_folder(tmp_path):
    with pytest.raises(TIError, match="does not exist"):
        list_templates(tmp_path / "nope")


@pytest.mark.parametrize(
    "content, expected",
    [
        ("one\ntwo\n", ["one", "two"]),
        ("  padded [name]  \n\n\n\tsecond\t\n", ["padded [name]", "second"]),
        ("windows\r\nline ends\r\n", ["windows", "line ends"]),
        ("\ufeffwith bom\n", ["with bom"]),
        ("no trailing newline", ["no trailing newline"]),
        ("ünïcödé [name] 日本\n", ["ünïcödé [name] 日本"]),
    ],
)
def test_read_template(tmp_path, content, expected):
    path = tmp_path / "t.txt"
    path.write_bytes(content.encode("utf-8"))
    assert read_template(path) == expected


@pytest.mark.parametrize("content", [b"", b"\n\n", b"   \n\t\n"])
def test_read_template_refuses_a_template_without_lines(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(TIError, match=r"empty\.txt: template has no prompt lines"):
        read_template(path)


def test_read_template_refuses_non_utf8(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café [name]\n".encode("latin-1"))
    with pytest.raises(TIError, match=r"latin\.txt: template is not UTF-8"):
        read_template(path)


@pytest.mark.parametrize("make_path", [lambda d: d / "missing.txt", lambda d: d])
def test_read_template_refuses_unreadable_paths(tmp_path, make_path):
    path = make_path(tmp_path)
    with pytest.raises(TIError, match="cannot read template") as raised:
        read_template(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    "wanted, expected_relative",
    [("style.txt", "style.txt"), ("style", "style.txt"), ("extra.txt", "more/extra.txt"), ("  b  ", "b.txt")],
)
def test_resolve_template_by_name(templates_dir, wanted, expected_relative):
    assert resolve_template(wanted, templates_dir) == templates_dir / expected_relative


def test_resolve_template_by_path(templates_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "mine.txt"
    outside.write_text("x\n", encoding="utf-8")
    assert resolve_template(str(outside), templates_dir) == outside
    # a path into the folder works too, even for a shadowed file
    shadowed = templates_dir / "more" / "deeper" / "style.txt"
    assert resolve_template(str(shadowed), templates_dir) == shadowed


@pytest.mark.parametrize("wanted", ["nope.txt", "", "/no/such/file.txt"])
def test_resolve_template_lists_what_is_there_when_missing(templates_dir, wanted):
    with pytest.raises(TIError) as raised:
        resolve_template(wanted, templates_dir)
    assert "a.TXT, b.txt, extra.txt, style.txt" in str(raised.value)


def test_resolve_template_with_missing_folder_says_so(tmp_path):
    with pytest.raises(TIError, match="is not a folder"):
        resolve_template("style.txt", tmp_path / "nope")


@pytest.mark.parametrize(
    "line, name, filewords, expected",
    [
        ("a painting by [name]", "vgogh", "", "a painting by vgogh"),
        ("[filewords], art by [name]", "vgogh", "a cat, red", "a cat, red, art by vgogh"),
        ("[name] [name] [filewords]", "x", "y", "x x y"),
        ("no placeholders", "x", "y", "no placeholders"),
        # text put in for one placeholder is not scanned for the other
        ("[filewords] by [name]", "[filewords]", "a [name] sign", "a [name] sign by [filewords]"),
        ("[NAME] [Name] [name]", "x", "", "[NAME] [Name] x"),
        ("[filewords]", "x", "", ""),
    ],
)
def test_render_prompt(line, name, filewords, expected):
    assert render_prompt(line, name, filewords) == expected


# The shipped templates: our own wording, A1111's line counts and placeholders (a1111-compat.md §6).
@pytest.mark.parametrize(
    "file_name, line_count, has_name, has_filewords",
    [
        ("none.txt", 1, False, False),
        ("style.txt", 19, True, False),
        ("style_filewords.txt", 19, True, True),
        ("subject.txt", 27, True, False),
        ("subject_filewords.txt", 27, True, True),
        ("hypernetwork.txt", 27, False, True),
    ],
)
def test_shipped_templates(file_name, line_count, has_name, has_filewords):
    lines = read_template(list_templates(SHIPPED_TEMPLATES_DIR)[file_name])
    assert len(lines) == line_count
    assert len(set(lines)) == line_count, "no repeated lines"
    for line in lines:
        assert ("[name]" in line) == has_name, line
        assert ("[filewords]" in line) == has_filewords, line
        leftover = render_prompt(line, "n", "f")
        assert "[" not in leftover and "]" not in leftover, f"unknown placeholder in {line!r}"
