"""Prompt editing ``[a:b:N]`` and alternation ``[a|b]``, scheduled as A1111 webui v1.10 does it.

A1111 (``modules/prompt_parser.py``, ``get_learned_conditioning_prompt_schedules``) parses the
prompt with a lark Earley grammar; this module is a hand-written, dependency-free parser for the
same language that gives the same schedules. The grammar, restated::

    start      := ( prompt | stray )*          stray: one of  [ ] ( ) :  kept as literal text
    prompt     := ( emphasized | scheduled | alternate | plain | whitespace )*
    emphasized := "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled  := "[" [ prompt ":" ] prompt ":" [ws] NUMBER [ws] "]"
    alternate  := "[" prompt ( "|" [prompt] )+ "]"
    plain      := ( any character but \\ [ ] ( ) : |   or   \\ followed by a non-newline )+
    NUMBER     := lark's SIGNED_NUMBER: 10, +3, 0.5, .5, 5., 1e1 ...

Semantics, for ``steps`` sampling steps (the default, non-hires, non-"old scheduling" mode):

- the schedule's steps are ``steps`` itself, every ``when`` of a ``scheduled`` group with
  ``1 <= when``, and every step ``1..steps`` if the prompt holds an ``alternate`` group. ``when``
  is ``min(steps, int(v))`` where ``v = float(NUMBER)``, times ``steps`` if the number's text
  contains a ``.`` (so ``0.5`` is half of the steps, ``1.0`` all of them, but ``1e1`` is step 10).
  Every group in the tree counts, also one inside a branch that is never shown;
- the text at step ``k`` (1-based) takes ``before`` (empty if absent) while ``k <= when``, else
  ``after``; an alternate takes option ``(k - 1) % len(options)`` (an empty option is "");
- everything else is kept as written: emphasis brackets and colons (``([a:b:5]:1.2)`` reads
  ``(a:1.2)`` up to step 5; the attention parser weighs it later), backslash escapes (``\\(`` stays
  two characters), whitespace.

A1111 quirks kept on purpose:

- no merging: ``prompt_schedule`` returns one entry per collected step even where consecutive
  texts are equal (always so for alternation). ``merged_schedule`` merges them for callers that
  only want to re-encode when the text changes;
- text that does not parse is returned whole and unscheduled, ``[(steps, text)]``. Only two things
  make that happen, since the ``start`` rule takes stray brackets and colons as text: a ``|``
  outside any alternation, or a backslash with nothing (or a newline) after it. Either one
  switches off *all* scheduling in the prompt: ``"[a:b:5] | c"`` is never edited;
- stray brackets are text: ``"a [b c"`` and ``"[a:b]"`` (no number, so no rule but ``start``
  takes it) come back unchanged, while a well-formed group among them is still scheduled
  (``"((a][:b:c [d:3]"`` edits ``[d:3]``);
- the off-by-one between the schedule and the sampler (``step_text``): an entry's
  ``end_at_step`` is compared with the 0-based sampler step, so ``[a:b:10]`` at 20 steps shows
  ``a`` for sampler steps 0..10 (eleven of them), and ``[a|b]`` shows a, a, b, a, b, ... over
  sampler steps 0, 1, 2, 3, 4; a sampler step past the last entry takes the *first* entry.

Where A1111 has no single answer or no answer, we pick one:

- A1111's result depends on the Python hash seed (lark resolves the Earley ambiguity by set
  order) when a well-formed group touches a following stray ``]``, ``)``, ``[``, ``(`` or ``:``,
  as in ``"[a:b:3]:x"`` or ``"[a:3]]"``: some runs schedule the group, others keep it as text.
  We always schedule every well-formed group, which is one of the results A1111 gives;
- a number too large for a float (``1e999``) makes A1111 raise OverflowError; we clamp it to
  ``steps`` (``-1e999`` to "never": always ``after``);
- groups nested deeper than ``MAX_NESTING`` (counting only brackets that get closed) give the
  whole-text fallback instead of a RecursionError.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence, Union

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


class ScheduleEntry(NamedTuple):
    """The prompt text used up to and including schedule step ``end_at_step`` (1-based)."""

    end_at_step: int
    text: str


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


def _parse(text: str) -> Prompt | None:
    """The tree of ``text``, or None where A1111 would fall back to the unscheduled text."""
    try:
        return _Parser(text).document()
    except _Unparsable:
        return None


# --- steps and rendering -------------------------------------------------------------------


def _end_step(number: str, steps: int) -> int:
    """A1111's ``when``: the last step that shows ``before`` (below 1: never)."""
    value = float(number)
    if "." in number:  # the text decides, not the value: "1.0" is all steps, "1" is step 1
        value *= steps
    if math.isinf(value):  # A1111 raises OverflowError in int(); clamp instead
        return steps if value > 0 else 0
    return min(steps, int(value))  # int() truncates toward zero, as in A1111


def _walk(prompt: Prompt) -> Iterator[Node]:
    """Every node of the tree, also inside branches a step may never show."""
    for node in prompt:
        yield node
        if isinstance(node, Emphasized):
            for part in node.parts:
                yield from _walk(part)
        elif isinstance(node, Scheduled):
            if node.before is not None:
                yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, Alternate):
            for option in node.options:
                yield from _walk(option)


def _schedule_steps(prompt: Prompt, steps: int) -> list[int]:
    """The steps at which the text may change, sorted, ``steps`` always among them."""
    found = {steps}
    for node in _walk(prompt):
        if isinstance(node, Scheduled):
            when = _end_step(node.number, steps)
            if when >= 1:
                found.add(when)
        elif isinstance(node, Alternate):
            found.update(range(1, steps + 1))
    return sorted(found)


def _render(prompt: Prompt | None, step: int, steps: int) -> str:
    """The text of ``prompt`` at 1-based ``step``; an absent prompt is ""."""
    if prompt is None:
        return ""
    return "".join(_render_node(node, step, steps) for node in prompt)


def _render_node(node: Node, step: int, steps: int) -> str:
    if isinstance(node, Text):
        return node.text
    if isinstance(node, Emphasized):
        inner = ":".join(_render(part, step, steps) for part in node.parts)
        return node.opening + inner + node.closing
    if isinstance(node, Scheduled):
        shown = node.before if step <= _end_step(node.number, steps) else node.after
        return _render(shown, step, steps)
    return _render(node.options[(step - 1) % len(node.options)], step, steps)


# --- public API ----------------------------------------------------------------------------


def prompt_schedule(text: str, steps: int) -> list[ScheduleEntry]:
    """``(end_at_step, text)`` for each step at which the prompt may change, as A1111 returns it.

    >>> prompt_schedule("a [cat:dog:0.5]", 20)
    [ScheduleEntry(end_at_step=10, text='a cat'), ScheduleEntry(end_at_step=20, text='a dog')]

    Consecutive equal texts are not merged (see ``merged_schedule``); text outside the grammar
    comes back whole: ``[(steps, text)]``.
    """
    tree = _parse(text)
    if tree is None:
        return [ScheduleEntry(steps, text)]
    return [ScheduleEntry(step, _render(tree, step, steps)) for step in _schedule_steps(tree, steps)]


def merged_schedule(schedule: Sequence[tuple[int, str]]) -> list[ScheduleEntry]:
    """``schedule`` with runs of equal consecutive texts merged into their last entry.

    ``step_text`` picks the same text from either, so conditioning needs computing only once per
    merged entry.
    """
    merged: list[ScheduleEntry] = []
    for end_at_step, text in schedule:
        if merged and merged[-1].text == text:
            merged[-1] = ScheduleEntry(end_at_step, text)
        else:
            merged.append(ScheduleEntry(end_at_step, text))
    return merged


def step_text(schedule: Sequence[tuple[int, str]], sampling_step: int) -> str:
    """The text A1111's ``reconstruct_cond_batch`` uses at 0-based ``sampling_step``.

    The first entry with ``sampling_step <= end_at_step``, comparing a 0-based index with 1-based
    end steps, so each switch comes one sampler step late: with ``[(10, "a"), (20, "b")]``
    sampler steps 0..10 use "a". A step past every entry takes the first entry, as A1111 does
    (its ``target_index`` starts at 0).
    """
    if not schedule:
        raise ValueError("empty prompt schedule")
    for end_at_step, text in schedule:
        if sampling_step <= end_at_step:
            return text
    return schedule[0][1]
