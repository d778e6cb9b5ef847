"""Prompt templates for training (a1111-compat.md §6).

A template is a text file with one prompt per line; ``[name]`` becomes the embedding or
hypernetwork name and ``[filewords]`` the image's caption. Templates live in
``textual_inversion_templates/`` (subfolders too) and are chosen by file name or by path.

Differences from A1111, on purpose:
- blank lines are dropped (A1111 keeps them, so a random pick can train on an empty prompt);
- ``[name]`` and ``[filewords]`` are replaced in one pass, so a caption that happens to contain
  ``[name]`` stays literal text (A1111 replaces it with the name).
"""

from __future__ import annotations

import re
from pathlib import Path

from ti.errors import TIError

NAME_PLACEHOLDER = "[name]"
FILEWORDS_PLACEHOLDER = "[filewords]"
TEMPLATE_SUFFIX = ".txt"

_PLACEHOLDER_PATTERN = re.compile(re.escape(NAME_PLACEHOLDER) + "|" + re.escape(FILEWORDS_PLACEHOLDER))


def list_templates(folder: Path) -> dict[str, Path]:
    """Every ``*.txt`` under ``folder`` (recursively), keyed by file name, sorted by name.

    When two subfolders hold the same file name, the one nearest the top wins (then the first
    in path order), so the result does not depend on the file system's listing order.

    Args:
        folder: the templates folder.

    Returns:
        ``{"style.txt": Path(...), ...}`` in name order.

    Raises:
        TIError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TIError(f"{folder}: the templates folder does not exist or is not a folder")
    candidates = [
        path for path in folder.rglob("*")
        if path.suffix.lower() == TEMPLATE_SUFFIX and path.is_file()
    ]
    candidates.sort(key=lambda path: (len(path.relative_to(folder).parts), path.relative_to(folder).as_posix()))
    templates: dict[str, Path] = {}
    for path in candidates:
        templates.setdefault(path.name, path)
    return dict(sorted(templates.items()))


def read_template(path: Path) -> list[str]:
    """The prompt lines of a template: each stripped, blank ones dropped.

    Args:
        path: the template file (UTF-8; a byte-order mark is allowed).

    Returns:
        The lines, in file order; never empty.

    Raises:
        TIError: the file cannot be read, is not UTF-8, or has no non-blank line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise TIError(
            f"{path}: template is not UTF-8 text (byte {error.start}: {error.reason}); "
            f"save it as UTF-8"
        ) from None
    except OSError as error:
        raise TIError(f"{path}: cannot read template: {error.strerror or error}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise TIError(f"{path}: template has no prompt lines; write one prompt per line")
    return lines


def resolve_template(name_or_path: str, folder: Path) -> Path:
    """Find a template by file name in ``folder`` or by path.

    A name is looked up in ``list_templates(folder)``, with or without ``.txt``
    (``"style"`` finds ``style.txt``); anything else is taken as a path to an existing file.

    Args:
        name_or_path: ``"style_filewords.txt"``, ``"style"``, or a path to a file.
        folder: the templates folder.

    Returns:
        The template's path.

    Raises:
        TIError: nothing matches; the message lists the templates in ``folder``.
    """
    wanted = str(name_or_path).strip()
    if not wanted:
        raise TIError(f"template: no name given; choose one of: {_available_names(folder)}")
    templates = list_templates(folder) if Path(folder).is_dir() else {}
    for candidate_name in (wanted, wanted + TEMPLATE_SUFFIX):
        if candidate_name in templates:
            return templates[candidate_name]
    as_path = Path(wanted).expanduser()
    if as_path.is_file():
        return as_path
    raise TIError(
        f'template "{wanted}": no such file in {folder} and no such path; '
        f"choose one of: {_available_names(folder)}"
    )


def _available_names(folder: Path) -> str:
    if not Path(folder).is_dir():
        return f"(none: {folder} is not a folder)"
    names = list(list_templates(folder))
    return ", ".join(names) if names else f"(none: {folder} holds no .txt files)"


def render_prompt(template_line: str, name: str, filewords: str) -> str:
    """Fill one template line: ``[name]`` → ``name``, ``[filewords]`` → ``filewords``.

    Both are replaced in a single pass, so text inserted for one placeholder is never scanned
    for the other.

    Args:
        template_line: a line from ``read_template``.
        name: the embedding or hypernetwork name.
        filewords: the image's caption (after tag shuffle and dropout).

    Returns:
        The prompt.
    """
    replacements = {NAME_PLACEHOLDER: name, FILEWORDS_PLACEHOLDER: filewords}
    return _PLACEHOLDER_PATTERN.sub(lambda match: replacements[match.group(0)], template_line)
