"""The A1111 schedule grammar: segments, lookups, resume, and refused input."""

import pytest

from ti.errors import ConfigError, ScheduleSyntaxError, TIError
from ti.schedule import ScheduleSegment, parse_schedule, schedule_end, value_at


def segments(*pairs):
    return [ScheduleSegment(value, end_step) for value, end_step in pairs]


@pytest.mark.parametrize(
    "text, max_steps, start_step, expected",
    [
        ("0.005", 100, 0, segments((0.005, 100))),
        ("0.005:100, 1e-3:1000, 1e-5", 2000, 0, segments((0.005, 100), (1e-3, 1000), (1e-5, 2000))),
        # resume: items ending at or before the resume step are dropped
        ("0.005:100, 1e-3:1000, 1e-5", 2000, 150, segments((1e-3, 1000), (1e-5, 2000))),
        ("0.005:100, 1e-3:1000, 1e-5", 2000, 100, segments((1e-3, 1000), (1e-5, 2000))),
        ("0.005:100, 1e-3:1000, 1e-5", 2000, 99, segments((0.005, 100), (1e-3, 1000), (1e-5, 2000))),
        ("0.005:100, 1e-3:1000, 1e-5", 2000, 1500, segments((1e-5, 2000))),
        # a bare rate runs to max steps even when resuming past every stepped item
        ("0.005:100, 1e-5", 2000, 5000, segments((1e-5, 2000))),
        ("0.005:100", 100000, 0, segments((0.005, 100))),
        # a step beyond max steps is cut to max, and later items never apply
        ("0.005:100, 1e-3:5000, 1e-5", 1000, 0, segments((0.005, 100), (1e-3, 1000))),
        ("0.005:5000", 1000, 0, segments((0.005, 1000))),
        ("0.005:1000, 1e-3:2000", 1000, 0, segments((0.005, 1000))),
        # -1 means until max steps
        ("0.005:100, 1e-3:-1", 500, 0, segments((0.005, 100), (1e-3, 500))),
        ("0.01:-1", 300, 0, segments((0.01, 300))),
        # blank items and spaces are skipped
        (" 0.005 : 100 ,, , 1e-3 ", 200, 0, segments((0.005, 100), (1e-3, 200))),
        ("0.005:100,", 200, 0, segments((0.005, 100))),
        ("1", 10, 0, segments((1.0, 10))),
    ],
)
def test_parse_schedule(text, max_steps, start_step, expected):
    assert parse_schedule(text, max_steps, start_step) == expected


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.005), (99, 0.005), (100, 1e-3), (999, 1e-3), (1000, 1e-5), (1999, 1e-5), (2000, None), (5000, None)],
)
def test_value_at_three_segment_schedule(step, expected):
    lr_segments = parse_schedule("0.005:100, 1e-3:1000, 1e-5", max_steps=2000)
    assert value_at(lr_segments, step) == expected


@pytest.mark.parametrize("step, expected", [(0, 0.005), (99, 0.005), (100, None)])
def test_single_stepped_item_finishes_at_its_step(step, expected):
    lr_segments = parse_schedule("0.005:100", max_steps=100000)
    assert value_at(lr_segments, step) == expected
    assert schedule_end(lr_segments) == 100


def test_resumed_schedule_gives_the_same_values_as_a_fresh_one():
    text, max_steps = "0.005:100, 1e-3:1000, 1e-5", 2000
    fresh = parse_schedule(text, max_steps)
    resumed = parse_schedule(text, max_steps, start_step=150)
    for step in range(150, 2001, 7):
        assert value_at(resumed, step) == value_at(fresh, step)


@pytest.mark.parametrize(
    "text, max_steps, expected_end",
    [("0.005", 100, 100), ("0.005:100, 1e-3:1000, 1e-5", 2000, 2000), ("0.005:100, 1e-3:5000", 1000, 1000),
     ("0.005:100, 1e-3:500", 1000, 500)],
)
def test_schedule_end(text, max_steps, expected_end):
    assert schedule_end(parse_schedule(text, max_steps)) == expected_end


@pytest.mark.parametrize(
    "text, message_parts",
    [
        ("0.005:abc", ['learning rate schedule "0.005:abc"', '"abc" is not a step number']),
        ("0.005:1.5", ['"1.5" is not a step number']),
        ("abc", ['learning rate schedule "abc"', '"abc" is not a number']),
        ("abc:100", ['"abc" is not a number']),
        (":100", ['"" is not a number']),
        ("0.005:", ['"" is not a step number']),
        ("", ['learning rate schedule ""', "no rate given"]),
        (" , ,", ["no rate given"]),
        ("0.005:100:200", ['"0.005:100:200" has 2 ":"']),
        ("0.01:200, 0.001:100", ['"0.001:100" ends before it starts', "0.01:200"]),
        ("0.01:200, 0.001:200", ['"0.001:200" ends before it starts']),
        ("0.005, 1e-3:1000", ['"1e-3:1000" comes after "0.005"', "until max steps"]),
        ("0.005:-1, 1e-3", ['"1e-3" comes after "0.005:-1"']),
        ("0.005:0", ['step "0" must be above 0']),
        ("0.005:-5", ['step "-5" must be above 0']),
        ("0", ['"0" must be a finite number above 0']),
        ("-0.005:100", ['"-0.005" must be a finite number above 0']),
        ("nan", ['"nan" must be a finite number above 0']),
        ("inf:100", ['"inf" must be a finite number above 0']),
        # errors after max steps are still reported
        ("0.005:100, 1e-3:5000, oops", ['"oops" is not a number']),
    ],
)
def test_bad_schedules_are_refused_with_the_bad_item_quoted(text, message_parts):
    with pytest.raises(ScheduleSyntaxError) as raised:
        parse_schedule(text, max_steps=1000)
    for part in message_parts:
        assert part in str(raised.value)


def test_schedule_errors_are_ti_and_value_errors():
    with pytest.raises(TIError):
        parse_schedule("x", 10)
    with pytest.raises(ValueError):
        parse_schedule("x", 10)


def test_field_name_appears_in_messages():
    with pytest.raises(ScheduleSyntaxError, match='^gradient clip value schedule "0.1:x"'):
        parse_schedule("0.1:x", 100, what="gradient clip value")


def test_resume_after_the_end_is_refused():
    with pytest.raises(ScheduleSyntaxError, match="nothing is left to train"):
        parse_schedule("0.005:100", max_steps=1000, start_step=150)


@pytest.mark.parametrize(
    "max_steps, start_step, field", [(0, 0, "max steps"), (-3, 0, "max steps"), (10, -1, "start step")]
)
def test_bad_step_counts_are_config_errors(max_steps, start_step, field):
    with pytest.raises(ConfigError) as raised:
        parse_schedule("0.005", max_steps, start_step)
    assert raised.value.field == field


def test_value_at_refuses_negative_steps_and_schedule_end_refuses_empty():
    with pytest.raises(ConfigError, match="step"):
        value_at(segments((0.1, 10)), -1)
    with pytest.raises(ConfigError, match="no segments"):
        schedule_end([])


def test_segments_are_frozen():
    segment = ScheduleSegment(0.1, 10)
    with pytest.raises(AttributeError):
        segment.value = 0.2
