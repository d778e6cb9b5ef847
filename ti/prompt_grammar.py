"""A1111's prompt-editing grammar, parsed into a tree by hand (A1111 uses a lark Earley grammar
in ``modules/prompt_parser.py``); ti/prompt_schedule.py turns the tree into schedules and holds
the semantics and the quirks kept. The grammar, restated::

    start      := ( prompt | stray )*          stray: one of  [ ] ( ) :  kept as literal text
    prompt     := ( emphasized | scheduled | alternate | plain | whitespace )*
    emphasized := "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled  := "[" [ prompt ":" ] prompt ":" [ws] NUMBER [ws] "]"
    alternate  := "[" prompt ( "|" [prompt] )+ "]"
    plain      := ( any character but \\ [ ] ( ) : |   or   \\ followed by a non-newline )+
    NUMBER     := lark's SIGNED_NUMBER: 10, +3, 0.5, .5, 5., 1e1 ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

MAX_NESTING = 100  # bracket groups inside one another; real prompts nest a handful

_STRAY_LITERALS = frozenset("[]():")  # what A1111's start rule takes as text between prompts
_PLAIN_STOPS = frozenset("[]():|")  # plain text ends here (a backslash escapes one of them)
_PROMPT_ENDS = frozenset(":|])")  # a nested prompt ends here; its group decides what follows

# lark's common.SIGNED_NUMBER, alternatives in lark's order: the token is the first alternative
# that matches on its own (lark's dynamic lexer takes the regex match as it is, no backtracking
# into what follows), so "1.5.]" is the number "1.5" and then a failed "]".
_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+"  # 1e1
    r"|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"  # 0.5, 5., .5, 1.5e1
    r"|[0-9]+)"  # 10
)
_WHITESPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class Text:
    """Text kept as written: plain text (escapes included), whitespace, a stray bracket."""

    text: str


@dataclass(frozen=True)
class Emphasized:
    """``(p)``, ``(p:q)`` or ``[p]``: rendered verbatim around its parts, joined by ``:``."""

    opening: str
    parts: tuple[Prompt, ...]
    closing: str


@dataclass(frozen=True)
class Scheduled:
    """``[before:after:number]`` or ``[after:number]`` (then ``before`` is None)."""

    before: Prompt | None
    after: Prompt
    number: str  # as written: whether it holds a "." decides fraction or step


@dataclass(frozen=True)
class Alternate:
    """``[a|b|...]``: option ``(k - 1) % len(options)`` at step ``k``."""

    options: tuple[Prompt, ...]


Node = Union[Text, Emphasized, Scheduled, Alternate]
Prompt = tuple[Node, ...]


class _Unparsable(Exception):
    """The text is outside A1111's grammar; the caller falls back to the whole text."""


# --- parsing -------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over one text.

    A group (``[...]`` or ``(...)``) that starts at a given position either parses one way or not
    at all, whatever surrounds it, so each attempt is remembered by position: a group that fails
    at top level is not parsed again for every ``[`` inside it. A bracket that no bracket closes
    fails at once, so stray brackets cost neither time nor recursion depth.
    """

    def __init__(self, text: str):
        self.text = text
        self.closers = _closing_brackets(text)
        self.groups: dict[int, tuple[Node, int] | None] = {}

    def char_at(self, position: int) -> str:
        return self.text[position] if position < len(self.text) else ""

    def document(self) -> Prompt:
        """The ``start`` rule: prompts, with stray ``[ ] ( ) :`` taken as text between them.

        Every well-formed group is parsed as such (see the module docstring for why that is the
        choice among A1111's possible readings); a bracket that opens no well-formed group is
        text, and the characters after it are parsed afresh.
        """
        nodes: list[Node] = []
        position = 0
        while position < len(self.text):
            char = self.text[position]
            if char in "[(":
                group = self.group(position, depth=1)
                if group is not None:
                    node, position = group
                    nodes.append(node)
                    continue
            if char in _STRAY_LITERALS:
                nodes.append(Text(char))
                position += 1
                continue
            end = self.plain_end(position)
            if end == position:  # "|" outside alternation, or a backslash escaping nothing
                raise _Unparsable
            nodes.append(Text(self.text[position:end]))
            position = end
        return tuple(nodes)

    def plain_end(self, position: int) -> int:
        """Where plain text starting at ``position`` ends (plain includes whitespace)."""
        text = self.text
        while position < len(text):
            char = text[position]
            if char == "\\":
                # "\\." in lark: "." does not match a newline, and a final backslash has no pair
                if position + 1 < len(text) and text[position + 1] != "\n":
                    position += 2
                    continue
                break
            if char in _PLAIN_STOPS:
                break
            position += 1
        return position

    def prompt(self, position: int, depth: int) -> tuple[Prompt, int]:
        """A nested prompt, up to the first character it cannot take; the group checks that one."""
        nodes: list[Node] = []
        while position < len(self.text):
            char = self.text[position]
            if char in _PROMPT_ENDS:
                break
            if char in "[(":
                group = self.group(position, depth + 1)
                if group is None:  # no stray text inside a group: the enclosing group fails
                    break
                node, position = group
                nodes.append(node)
                continue
            end = self.plain_end(position)
            if end == position:
                break
            nodes.append(Text(self.text[position:end]))
            position = end
        return tuple(nodes), position

    def group(self, position: int, depth: int) -> tuple[Node, int] | None:
        """The group opening at ``position`` and the position after it, or None if malformed."""
        if position not in self.closers:
            return None
        if depth > MAX_NESTING:
            raise _Unparsable
        if position not in self.groups:
            if self.text[position] == "(":
                self.groups[position] = self.round_group(position, depth)
            else:
                self.groups[position] = self.square_group(position, depth)
        return self.groups[position]

    def round_group(self, position: int, depth: int) -> tuple[Node, int] | None:
        first, position = self.prompt(position + 1, depth)
        if self.char_at(position) == ")":
            return Emphasized("(", (first,), ")"), position + 1
        if self.char_at(position) != ":":
            return None
        second, position = self.prompt(position + 1, depth)
        if self.char_at(position) == ")":
            return Emphasized("(", (first, second), ")"), position + 1
        return None

    def square_group(self, position: int, depth: int) -> tuple[Node, int] | None:
        first, position = self.prompt(position + 1, depth)
        following = self.char_at(position)
        if following == "]":
            return Emphasized("[", (first,), "]"), position + 1
        if following == "|":
            options = [first]
            while self.char_at(position) == "|":
                option, position = self.prompt(position + 1, depth)
                options.append(option)
            if self.char_at(position) == "]":
                return Alternate(tuple(options)), position + 1
            return None
        if following != ":":
            return None
        # "[after:N]" or "[before:after:N]": the two cannot both fit (after a ":" either a number
        # closes the group or a prompt runs to the next ":"), so try them in turn.
        closing = self.schedule_close(position + 1)
        if closing is not None:
            number, end = closing
            return Scheduled(None, first, number), end
        second, position = self.prompt(position + 1, depth)
        if self.char_at(position) != ":":
            return None
        closing = self.schedule_close(position + 1)
        if closing is None:
            return None
        number, end = closing
        return Scheduled(first, second, number), end

    def schedule_close(self, position: int) -> tuple[str, int] | None:
        """``[ws] NUMBER [ws] "]"`` at ``position``: the number's text and the position after."""
        position = _WHITESPACE.match(self.text, position).end()
        number = _NUMBER.match(self.text, position)
        if number is None:
            return None
        position = _WHITESPACE.match(self.text, number.end()).end()
        if self.char_at(position) != "]":
            return None
        return number.group(), position + 1


def _closing_brackets(text: str) -> dict[int, int]:
    """Each ``[`` or ``(`` that a bracket of its kind closes with proper nesting -> that bracket.

    Only these can open a well-formed group: a group's inside is a prompt, which has no stray
    brackets. A close bracket of the wrong kind ends every group still open (each would meet it
    where it needs its own close bracket or a nested group's).
    """
    closers: dict[int, int] = {}
    open_brackets: list[int] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2  # an escaped bracket is text (a final or newline-escaping one fails later)
            continue
        if char in "[(":
            open_brackets.append(position)
        elif char in "])":
            opener = "[" if char == "]" else "("
            if open_brackets and text[open_brackets[-1]] == opener:
                closers[open_brackets.pop()] = position
            else:
                open_brackets.clear()
        position += 1
    return closers


def parse_prompt(text: str) -> Prompt | None:
    """The tree of ``text``, or None where A1111 would fall back to the unscheduled text."""
    try:
        return _Parser(text).document()
    except _Unparsable:
        return None
