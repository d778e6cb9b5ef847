"""The A1111 schedule grammar for learning rates and gradient-clip values (a1111-compat.md §5).

A schedule is a comma-separated list of items:

- ``rate:step`` keeps ``rate`` for optimizer steps below ``step``;
- ``rate:-1`` keeps ``rate`` until max steps (it must be the last item);
- a bare ``rate`` keeps it until max steps (it must be the last item).

``"0.005:100, 1e-3:1000, 1e-5"`` gives 0.005 for steps 0-99, 1e-3 for 100-999, then 1e-5
until max steps. ``"0.005:100"`` alone trains only 100 steps: when the schedule runs out,
training is finished. Steps count optimizer steps, i.e. after gradient accumulation.

Where A1111 silently does something surprising we refuse with a ScheduleSyntaxError instead:

- an item with three or more ``:`` parts (A1111 reads it as a bare rate);
- steps that do not increase (``"0.01:200, 0.001:100"``; A1111 ends training early);
- items after a bare rate or a ``-1`` item (A1111 ignores them without a word);
- a step of 0 or below -1 (the rate would never apply), and rates that are not finite and > 0.

Items whose step lies beyond max steps are still checked, then left out: a schedule written for
a long run stays valid for a shorter one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ti.errors import ConfigError, ScheduleSyntaxError

UNTIL_MAX_STEPS = -1

_EXAMPLE = 'write a number like 0.005, or rate:step items like "0.005:100, 1e-3:1000, 1e-5"'


@dataclass(frozen=True)
class ScheduleSegment:
    """One piece of a schedule: ``value`` applies to every optimizer step below ``end_step``
    (and at or above the previous segment's end)."""

    value: float
    end_step: int


@dataclass(frozen=True)
class _ScheduleItem:
    """One parsed item, before max steps and the resume step are applied."""

    value: float
    step: int | None  # None: a bare rate; UNTIL_MAX_STEPS: "rate:-1"
    source: str


def _parse_value(number_text: str, schedule_text: str, what: str) -> float:
    try:
        value = float(number_text)
    except ValueError:
        raise ScheduleSyntaxError(
            f'{what} schedule "{schedule_text}": "{number_text}" is not a number; {_EXAMPLE}'
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ScheduleSyntaxError(
            f'{what} schedule "{schedule_text}": "{number_text}" must be a finite number above 0'
        )
    return value


def _parse_step(step_text: str, schedule_text: str, what: str) -> int:
    try:
        step = int(step_text)
    except ValueError:
        raise ScheduleSyntaxError(
            f'{what} schedule "{schedule_text}": "{step_text}" is not a step number '
            f"(a whole number of optimizer steps, or -1 for until max steps)"
        ) from None
    if step == 0 or step < UNTIL_MAX_STEPS:
        raise ScheduleSyntaxError(
            f'{what} schedule "{schedule_text}": step "{step_text}" must be above 0 '
            f"(or -1 for until max steps)"
        )
    return step


def _parse_items(text: str, what: str) -> list[_ScheduleItem]:
    """Every non-blank item of ``text``, checked for syntax and order."""
    items: list[_ScheduleItem] = []
    for raw_item in text.split(","):
        item_text = raw_item.strip()
        if not item_text:
            continue  # blank items are skipped, as in A1111
        if items and items[-1].step in (None, UNTIL_MAX_STEPS):
            raise ScheduleSyntaxError(
                f'{what} schedule "{text}": "{item_text}" comes after "{items[-1].source}", '
                f"which already runs until max steps; remove one of them"
            )
        parts = item_text.split(":")
        if len(parts) > 2:
            raise ScheduleSyntaxError(
                f'{what} schedule "{text}": "{item_text}" has {len(parts) - 1} ":"; '
                f"an item is a rate or rate:step"
            )
        value = _parse_value(parts[0].strip(), text, what)
        step = _parse_step(parts[1].strip(), text, what) if len(parts) == 2 else None
        if step is not None and step != UNTIL_MAX_STEPS and items and step <= items[-1].step:
            raise ScheduleSyntaxError(
                f'{what} schedule "{text}": "{item_text}" ends before it starts '
                f'(the previous item "{items[-1].source}" already runs to step {items[-1].step}); '
                f"steps must increase"
            )
        items.append(_ScheduleItem(value, step, item_text))
    if not items:
        raise ScheduleSyntaxError(f'{what} schedule "{text}": no rate given; {_EXAMPLE}')
    return items


def parse_schedule(
    text: str, max_steps: int, start_step: int = 0, what: str = "learning rate"
) -> list[ScheduleSegment]:
    """Parse an A1111 schedule into segments, as A1111 does for a run resumed at ``start_step``.

    Args:
        text: the schedule, e.g. ``"0.005"`` or ``"0.005:100, 1e-3:1000, 1e-5"``.
        max_steps: the run's max optimizer steps (> 0); no segment ends after it.
        start_step: optimizer steps already done (resume); items ending at or before it are
            dropped, so the first segment is the one in force at ``start_step``.
        what: the field's name for error messages (``"learning rate"``, ``"gradient clip value"``).

    Returns:
        Segments in order, each ``(value, end_step)`` with ``end_step <= max_steps``; the last
        ends where training finishes.

    Raises:
        ScheduleSyntaxError: a bad number or step, three or more ``:`` in an item, steps that do
            not increase, items after one that runs until max steps, an empty schedule, or
            nothing left to do after ``start_step``. The message quotes the schedule and the item.
        ConfigError: ``max_steps`` below 1 or ``start_step`` below 0.
    """
    if max_steps < 1:
        raise ConfigError("max steps", f"must be at least 1, got {max_steps}")
    if start_step < 0:
        raise ConfigError("start step", f"must be 0 or more, got {start_step}")
    segments: list[ScheduleSegment] = []
    for item in _parse_items(text, what):
        if item.step is None or item.step == UNTIL_MAX_STEPS:
            segments.append(ScheduleSegment(item.value, max_steps))
            break
        if item.step <= start_step:
            continue  # already done before the resume point
        segments.append(ScheduleSegment(item.value, min(item.step, max_steps)))
        if item.step >= max_steps:
            break  # later items start after max steps: they never apply
    if not segments:
        raise ScheduleSyntaxError(
            f'{what} schedule "{text}": every item ends at or before step {start_step}, '
            f"where this run resumes; nothing is left to train"
        )
    return segments


def value_at(segments: list[ScheduleSegment], step: int) -> float | None:
    """The scheduled value for optimizer step ``step`` (0-based: the number of steps done).

    Args:
        segments: from ``parse_schedule``.
        step: optimizer steps already done.

    Returns:
        The value of the first segment with ``step < end_step``, or None when the schedule is
        exhausted, i.e. training is finished.

    Raises:
        ConfigError: a negative step.
    """
    if step < 0:
        raise ConfigError("step", f"must be 0 or more, got {step}")
    for segment in segments:
        if step < segment.end_step:
            return segment.value
    return None


def schedule_end(segments: list[ScheduleSegment]) -> int:
    """The optimizer step at which the schedule (and so training) ends.

    Raises:
        ConfigError: no segments.
    """
    if not segments:
        raise ConfigError("schedule", "has no segments")
    return segments[-1].end_step
