"""Prompt editing and alternation schedules, table-driven against A1111 webui v1.10's results.

The expected schedules are what A1111's own ``get_learned_conditioning_prompt_schedules`` returns
(its doctests among them); the few cases where A1111's answer depends on the hash seed, or where
it crashes, are marked.
"""

from __future__ import annotations

import pytest

from ti.prompt_schedule import MAX_NESTING, ScheduleEntry, merged_schedule, prompt_schedule, step_text


def unchanged(text: str, steps: int) -> tuple[str, int, list[tuple[int, str]]]:
    """A case whose text comes back whole and unscheduled."""
    return text, steps, [(steps, text)]


def alternating(steps: int, *texts: str) -> list[tuple[int, str]]:
    return [(step, texts[(step - 1) % len(texts)]) for step in range(1, steps + 1)]


@pytest.mark.parametrize(
    "text, steps, expected",
    [
        # no syntax
        unchanged("a cat", 20),
        unchanged("", 20),
        unchanged("a, b (c:1.2), [d]", 20),
        # [from:to:when]: fraction (the number has a ".") or step
        ("[a:b:0.5]", 20, [(10, "a"), (20, "b")]),
        ("[a:b:10]", 20, [(10, "a"), (20, "b")]),
        ("[a:b:.5]", 20, [(10, "a"), (20, "b")]),
        ("a [cat:dog:0.25] b", 100, [(25, "a cat b"), (100, "a dog b")]),
        ("[a:b:1]", 20, [(1, "a"), (20, "b")]),
        ("[a:b:1.0]", 20, [(20, "a")]),  # "1.0" is all the steps, "1" is step 1
        ("[a:b:5.]", 20, [(20, "a")]),  # 5.0 * 20, capped at steps
        ("[a:b:1.5]", 20, [(20, "a")]),
        ("[a:b:0.3]", 7, [(2, "a"), (7, "b")]),  # int(0.3 * 7 = 2.0999...) truncates
        ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),  # an exponent is no "." : absolute step 10
        ("[a:b:+3]", 20, [(3, "a"), (20, "b")]),
        ("[a:b:0]", 20, [(20, "b")]),  # when 0: no boundary, and "after" from step 1
        ("[a:b:0.01]", 20, [(20, "b")]),  # int(0.2) = 0
        ("[a:b:-3]", 20, [(20, "b")]),
        ("[a:b:25]", 20, [(20, "a")]),  # capped at steps: "before" throughout
        ("[a:b: 5 ]", 20, [(5, "a"), (20, "b")]),  # whitespace around the number
        ("[a:b:\n5\t]", 20, [(5, "a"), (20, "b")]),
        ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),  # spaces are kept
        ("[a:5:3]", 10, [(3, "a"), (10, "5")]),  # "after" may look like a number
        # [to:when] adds, [from::when] removes
        ("[to:5]", 20, [(5, ""), (20, "to")]),
        ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
        ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
        ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
        ("[from::5]", 20, [(5, "from"), (20, "")]),
        ("[::5]", 20, [(5, ""), (20, "")]),
        (
            "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
            "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]",
            100,
            [
                (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
                (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
                (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
                (75, "fantasy landscape with a lake and an oak in background masterful"),
                (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
            ],
        ),
        # nesting
        ("[[a:b:5]:c:10]", 20, [(5, "a"), (10, "b"), (20, "c")]),
        ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("[a:[b:c:15]:10]", 20, [(10, "a"), (15, "b"), (20, "c")]),
        # a boundary inside a branch that is over by then still counts: equal neighbours
        ("[[a:b:15]:c:10]", 20, [(10, "a"), (15, "c"), (20, "c")]),
        ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
        # alternation: every step, never merged
        ("[a|b]", 4, alternating(4, "a", "b")),
        ("[a|b|c]", 5, alternating(5, "a", "b", "c")),
        ("[a|]", 3, alternating(3, "a", "")),
        ("[|a]", 3, alternating(3, "", "a")),
        ("[a|a]", 3, alternating(3, "a")),
        ("[fe|]male", 10, alternating(10, "female", "male")),
        ("[fe|||]male", 10, alternating(10, "female", "male", "male", "male")),
        ("[a|(b:1.1)]", 4, alternating(4, "a", "(b:1.1)")),
        ("[a|b]", 1, [(1, "a")]),
        ("[a|[b:c:2]]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "c")]),
        ("[[a:b:2]|c]", 4, [(1, "a"), (2, "c"), (3, "b"), (4, "c")]),
        ("[a|b] [c:d:2]", 3, [(1, "a c"), (2, "b c"), (3, "a d")]),
        ("[[a|b]:c:2]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "c")]),
        # emphasis is kept verbatim around scheduled text (weighed later by the attention parser)
        ("([a:b:5]:1.2)", 10, [(5, "(a:1.2)"), (10, "(b:1.2)")]),
        ("(x [a:b:3]:1.3)", 5, [(3, "(x a:1.3)"), (5, "(x b:1.3)")]),
        ("[[a:b:3]]", 5, [(3, "[a]"), (5, "[b]")]),
        ("(([a:b:3]))", 5, [(3, "((a))"), (5, "((b))")]),
        ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
        ("[[a|b]]", 2, [(1, "[a]"), (2, "[b]")]),
        # escapes stay two characters and are no syntax
        unchanged(r"\[not:scheduled:3\]", 10),
        (r"\(a\) [b:c:2]", 4, [(2, r"\(a\) b"), (4, r"\(a\) c")]),
        (r"[a\:b:c:2]", 4, [(2, r"a\:b"), (4, "c")]),
        (r"[a\|b:2]", 4, [(2, ""), (4, r"a\|b")]),
        # an embedding's name is just text
        ("[mytok:other:0.5]", 10, [(5, "mytok"), (10, "other")]),
        ("<mytok>, [mytok|other]", 2, [(1, "<mytok>, mytok"), (2, "<mytok>, other")]),
        ("[a:b:2]\nc", 4, [(2, "a\nc"), (4, "b\nc")]),
        # stray brackets and colons are text; well-formed groups among them still count
        unchanged("a [b c", 10),
        unchanged("a [unbalanced", 10),
        unchanged("[a:b]", 20),  # no number: not a schedule, and [p] takes no colon
        unchanged("[a:b:c]", 20),
        unchanged("[a:b:]", 20),
        unchanged("[a:5.5.5]", 10),  # the number token is "5.5"; ".5]" does not close it
        unchanged("[a:1e]", 10),
        unchanged("(a:b:c)", 10),
        unchanged("a:1.2)", 10),
        unchanged("]][[", 10),
        ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("x ] [a:3]", 10, [(3, "x ] "), (10, "x ] a")]),
        ("a][b:3]", 10, [(3, "a]"), (10, "a]b")]),
        ("[a:[b:3]", 10, [(3, "[a:"), (10, "[a:b")]),
        ("(a:b:c) [x:2]", 10, [(2, "(a:b:c) "), (10, "(a:b:c) x")]),
        ("[(a:b:c):2] [x:3]", 10, [(3, "[(a:b:c):2] "), (10, "[(a:b:c):2] x")]),
        ("x:[a:b:3]", 10, [(3, "x:a"), (10, "x:b")]),
        # A1111 gives either reading here depending on the Python hash seed; we keep the group
        ("[a:b:3]:x", 10, [(3, "a:x"), (10, "b:x")]),
        ("[a:3]]", 10, [(3, "]"), (10, "a]")]),
        ("[a:b:3]:[c:4]", 10, [(3, "a:"), (4, "b:"), (10, "b:c")]),
        # outside the grammar: the whole text, unscheduled, even where groups are well formed
        unchanged("a | b", 10),
        unchanged("[a:b:5] | c", 10),  # a stray "|" switches all editing off
        unchanged("[a|b:3]", 10),
        unchanged("[a|b", 10),
        unchanged("[a|b][c:2]|", 10),
        unchanged("(a|b)", 10),
        unchanged("[a:b:5] a\\", 10),  # a final backslash escapes nothing
        unchanged("[a:b:5] a\\\nb", 10),  # nor does one before a newline
        # where A1111 crashes (OverflowError) we clamp
        ("[a:b:1e999]", 20, [(20, "a")]),
        ("[a:b:-1e999]", 20, [(20, "b")]),
    ],
)
def test_prompt_schedule(text, steps, expected):
    assert prompt_schedule(text, steps) == expected


def test_entries_name_their_fields():
    first, last = prompt_schedule("[a:b:0.5]", 20)
    assert first == ScheduleEntry(end_at_step=10, text="a")
    assert (last.end_at_step, last.text) == (20, "b")


def nested(depth: int, inside: str) -> str:
    return "[" * depth + inside + "]" * depth


def test_nesting_up_to_the_limit_is_scheduled():
    # the innermost pair of brackets is the schedule itself, the others are [p] emphasis
    inner_emphasis = MAX_NESTING - 1
    assert prompt_schedule(nested(MAX_NESTING, "a:b:2"), 4) == [
        (2, nested(inner_emphasis, "a")),
        (4, nested(inner_emphasis, "b")),
    ]


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_NESTING + 1, "a:b:2"),  # the whole text rather than a RecursionError
        "[" * 5000,  # never closed: plain text, whatever the depth (as in A1111)
        "[" * 5000 + "a|b",  # and the "|" is outside any alternation
    ],
)
def test_deep_or_unclosed_nesting_gives_the_whole_text(text):
    assert prompt_schedule(text, 4) == [(4, text)]


def test_long_prompt_with_many_stray_brackets_parses_quickly():
    text = "[(" * 20_000 + " [a:b:2]"
    assert prompt_schedule(text, 4) == [(2, "[(" * 20_000 + " a"), (4, "[(" * 20_000 + " b")]


# --- step_text: A1111's reconstruct_cond_batch ----------------------------------------------


@pytest.mark.parametrize(
    "text, steps, texts_by_sampling_step",
    [
        # the off-by-one: sampler steps 0..10 (eleven) use "a", 11..19 use "b"
        ("[a:b:10]", 20, ["a"] * 11 + ["b"] * 9),
        ("[a:b:0.5]", 20, ["a"] * 11 + ["b"] * 9),
        ("[a:b:1]", 4, ["a", "a", "b", "b"]),
        ("[a:b:0]", 4, ["b"] * 4),
        ("[a:b:25]", 4, ["a"] * 4),
        ("[a|b]", 4, ["a", "a", "b", "a"]),
        ("[a|b]", 6, ["a", "a", "b", "a", "b", "a"]),
        ("[a|b|c]", 6, ["a", "a", "b", "c", "a", "b"]),
        ("[to:2]", 5, ["", "", "", "to", "to"]),
        ("a | b", 3, ["a | b"] * 3),
    ],
)
def test_step_text(text, steps, texts_by_sampling_step):
    schedule = prompt_schedule(text, steps)
    assert [step_text(schedule, step) for step in range(steps)] == texts_by_sampling_step


@pytest.mark.parametrize(
    "schedule, sampling_step, expected",
    [
        ([(10, "a"), (20, "b")], 10, "a"),
        ([(10, "a"), (20, "b")], 11, "b"),
        ([(10, "a"), (20, "b")], 20, "b"),
        # past every entry A1111 falls back to the first one, not the last
        ([(10, "a"), (20, "b")], 21, "a"),
        ([(20, "x")], 99, "x"),
        ([(10, "a"), (20, "b")], -1, "a"),
    ],
)
def test_step_text_edges(schedule, sampling_step, expected):
    assert step_text(schedule, sampling_step) == expected


def test_step_text_refuses_an_empty_schedule():
    with pytest.raises(ValueError):
        step_text([], 0)


# --- merged_schedule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ([], []),
        ([(20, "a")], [(20, "a")]),
        ([(1, "a"), (2, "a"), (3, "a")], [(3, "a")]),
        ([(1, "a"), (2, "b"), (3, "a")], [(1, "a"), (2, "b"), (3, "a")]),  # only neighbours merge
        ([(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "a")], [(2, "a"), (4, "b"), (5, "a")]),
        (prompt_schedule("[[a:b:15]:c:10]", 20), [(10, "a"), (20, "c")]),
        (prompt_schedule("[a|a]", 3), [(3, "a")]),
        (prompt_schedule("[[a|a]:b:2]", 4), [(2, "a"), (4, "b")]),
        (prompt_schedule("[a|b]", 3), [(1, "a"), (2, "b"), (3, "a")]),
    ],
)
def test_merged_schedule(schedule, expected):
    assert merged_schedule(schedule) == expected


@pytest.mark.parametrize(
    "text, steps",
    [
        ("[[a:b:15]:c:10]", 20),
        ("[a|a|b] [c:d:0.5]", 10),
        ("[fe|||]male", 10),
        ("[a:b:10]", 20),
        ("[[a:b:2]|[a:c:3]] x", 6),
        ("plain", 5),
    ],
)
def test_merged_schedule_picks_the_same_text_at_every_sampling_step(text, steps):
    schedule = prompt_schedule(text, steps)
    merged = merged_schedule(schedule)
    assert len(merged) <= len(schedule)
    for sampling_step in range(steps + 3):  # past the end too
        assert step_text(merged, sampling_step) == step_text(schedule, sampling_step)
