"""Prompt editing ``[a:b:N]`` and alternation ``[a|b]``, scheduled as A1111 webui v1.10 does it.

A1111 (``modules/prompt_parser.py``, ``get_learned_conditioning_prompt_schedules``) parses the
prompt with a lark Earley grammar; ti/prompt_grammar.py is a hand-written, dependency-free parser
for the same language, and this module turns its tree into the same schedules.

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
from typing import Iterator, NamedTuple, Sequence

from ti.prompt_grammar import MAX_NESTING, Alternate, Emphasized, Node, Prompt, Scheduled, Text, parse_prompt

__all__ = ["MAX_NESTING", "ScheduleEntry", "merged_schedule", "prompt_schedule", "step_text"]


class ScheduleEntry(NamedTuple):
    """The prompt text used up to and including schedule step ``end_at_step`` (1-based)."""

    end_at_step: int
    text: str


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
    tree = parse_prompt(text)
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
