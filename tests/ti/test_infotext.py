"""Infotext: A1111's layout, its parser, round trips, TI hashes, and sampler names."""

import pytest

from ti.errors import ConfigError
from ti.infotext import (
    format_infotext,
    format_parameter_value,
    format_ti_hashes,
    parse_infotext,
    parse_size,
    parse_ti_hashes,
    quote_parameter_value,
    sampler_and_schedule,
)

DEMO_PARAMS = {
    "Steps": 20,
    "Sampler": "Euler a",
    "CFG scale": 7.0,
    "Seed": 4077357776,
    "Size": "512x512",
    "Model hash": "1234567890",
    "Model": "demo",
    "TI hashes": "tree: 0123456789ab",
}
DEMO_PARAMS_LINE = (
    'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 4077357776, Size: 512x512, '
    'Model hash: 1234567890, Model: demo, TI hashes: "tree: 0123456789ab"'
)


def test_format_infotext_matches_a1111_layout():
    text = format_infotext("a tree, <tree>", "blurry", DEMO_PARAMS)
    assert text == "a tree, <tree>\nNegative prompt: blurry\n" + DEMO_PARAMS_LINE


def test_format_infotext_leaves_out_empty_negative_and_none_values():
    params = {"Steps": 20, "Schedule type": None, "Seed": 1, "Size": "64x64"}
    assert format_infotext("p", "", params) == "p\nSteps: 20, Seed: 1, Size: 64x64"


def test_format_infotext_without_params_is_just_the_prompts():
    assert format_infotext("p", "n", {}) == "p\nNegative prompt: n"


@pytest.mark.parametrize(
    "value, expected",
    [(7.0, "7"), (7.5, "7.5"), (0.1, "0.1"), (-2.0, "-2"), (1e20, "1e+20"), (float("nan"), "nan"),
     (20, "20"), (True, "True"), (False, "False"), ("Euler a", "Euler a"), (None, "None")],
)
def test_format_parameter_value(value, expected):
    assert format_parameter_value(value) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("k: v", '"k: v"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi"', 'say "hi"'),  # inner quotes alone read back fine
        ('"starts quoted"', '"\\"starts quoted\\""'),
        ("", '""'),
        (" padded", '" padded"'),
        ("日本, ok", '"日本, ok"'),  # unicode stays readable
    ],
)
def test_quote_parameter_value(text, expected):
    assert quote_parameter_value(text) == expected


@pytest.mark.parametrize("bad_key", ["S", "bad:key", "bad,key", "Steps ", " Steps", "-Steps", "x.y", 7])
def test_format_infotext_refuses_keys_that_would_not_read_back(bad_key):
    with pytest.raises(ConfigError) as raised:
        format_infotext("p", "", {bad_key: 1, "Steps": 20, "Seed": 1})
    assert raised.value.field == "infotext parameter name"


@pytest.mark.parametrize(
    "text, expected_prompt, expected_negative, expected_params",
    [
        (
            "a tree, <tree>\nNegative prompt: blurry\n" + DEMO_PARAMS_LINE,
            "a tree, <tree>", "blurry",
            {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "4077357776", "Size": "512x512",
             "Model hash": "1234567890", "Model": "demo", "TI hashes": "tree: 0123456789ab"},
        ),
        # fewer than three pairs on the last line: it is prompt text
        ("a cat\nSteps: 20, Seed: 1", "a cat\nSteps: 20, Seed: 1", "", {}),
        ("just a prompt", "just a prompt", "", {}),
        ("", "", "", {}),
        # multi-line prompt and negative prompt; the params line is last
        ("line one\nline two\nNegative prompt: bad\nworse\nSteps: 1, Seed: 2, CFG scale: 3",
         "line one\nline two", "bad\nworse", {"Steps": "1", "Seed": "2", "CFG scale": "3"}),
        # only the parameters: the prompt is empty
        ("Steps: 1, Seed: 2, CFG scale: 3", "", "", {"Steps": "1", "Seed": "2", "CFG scale": "3"}),
        # Windows line ends and a trailing newline
        ("p\r\nNegative prompt: n\r\nSteps: 1, Seed: 2, Model: m\r\n", "p", "n",
         {"Steps": "1", "Seed": "2", "Model": "m"}),
        # hand-written spacing
        ("p\nSteps:1,Seed:  2 ,Model: m", "p", "", {"Steps": "1", "Seed": "2", "Model": "m"}),
        # a later "Negative prompt:" line belongs to the negative prompt
        ("p\nNegative prompt: a\nNegative prompt: b\nSteps: 1, Seed: 2, Model: m",
         "p", "a\nNegative prompt: b", {"Steps": "1", "Seed": "2", "Model": "m"}),
        # bad JSON in quotes stays as written
        ('p\nSteps: 1, Seed: 2, Odd: "\\q"', "p", "", {"Steps": "1", "Seed": "2", "Odd": '"\\q"'}),
    ],
)
def test_parse_infotext(text, expected_prompt, expected_negative, expected_params):
    prompt, negative, params = parse_infotext(text)
    assert (prompt, negative, params) == (expected_prompt, expected_negative, expected_params)


def test_parse_infotext_keeps_parameter_order():
    _, _, params = parse_infotext("p\n" + DEMO_PARAMS_LINE)
    assert list(params) == list(DEMO_PARAMS)


TRICKY_PROMPTS = [
    ("a photo of <tree>, (masterpiece:1.2), [sky|sea]", "lowres, bad anatomy"),
    ('a "quoted" word: yes, really', 'neg: "x", y'),
    ("line one\nline two\n\nline four", "neg one\nneg two"),
    ("日本語のプロンプト, ünïcødé, emoji 🌲", "ночь"),
    ("  leading and trailing spaces  ", "  spaced negative  "),
    ("empty negative", ""),
    ("", "only a negative"),
    ("", ""),
    ("trailing newline\n", "also\n"),
    ("Steps: 1, Seed: 2, Model: looks like params", ""),
    ("back\\slash and tab\t", "negative with Negative prompt: inside"),
]
TRICKY_PARAMS = {
    "Steps": 20,
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": 7.5,
    "Seed": 1,
    "Size": "512x768",
    "Model": "my model, v2: final",
    "TI hashes": format_ti_hashes({"tree": "0123456789ab", "sky": "ba9876543210"}),
    "Note": 'multi\nline "value"\twith, everything:',
    "Empty": "",
    "Quoted": '"already quoted"',
    "Path/with-dash": "C:\\models\\x.safetensors",
    "Unicode": "ünï, 日本",
}


@pytest.mark.parametrize("prompt, negative", TRICKY_PROMPTS)
def test_format_then_parse_round_trips(prompt, negative):
    text = format_infotext(prompt, negative, TRICKY_PARAMS)
    parsed_prompt, parsed_negative, parsed_params = parse_infotext(text)
    assert parsed_prompt == prompt
    assert parsed_negative == negative
    assert parsed_params == {key: format_parameter_value(value) for key, value in TRICKY_PARAMS.items()}


def test_round_trip_of_demo_params():
    _, _, params = parse_infotext(format_infotext("p", "", DEMO_PARAMS))
    assert params == {key: format_parameter_value(value) for key, value in DEMO_PARAMS.items()}
    assert params["CFG scale"] == "7"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("tree: 0123456789ab", {"tree": "0123456789ab"}),
        ("tree: 0123456789ab, sky: ba9876543210", {"tree": "0123456789ab", "sky": "ba9876543210"}),
        ("  tree:0123456789ab ,, ", {"tree": "0123456789ab"}),
        ("my tree: 01", {"my tree": "01"}),
        ("", {}),
    ],
)
def test_parse_ti_hashes(value, expected):
    assert parse_ti_hashes(value) == expected


@pytest.mark.parametrize("value", ["tree", "tree: ", ": abc", "tree: 01, sky"])
def test_parse_ti_hashes_refuses_items_without_name_and_hash(value):
    with pytest.raises(ConfigError, match='is not "name: hash"') as raised:
        parse_ti_hashes(value)
    assert raised.value.field == "TI hashes"


@pytest.mark.parametrize(
    "hashes, expected",
    [
        ({"tree": "0123456789ab"}, "tree: 0123456789ab"),
        ({"tree": "01", "sky": "02"}, "tree: 01, sky: 02"),
        ({"a:b,c": "01"}, "abc: 01"),  # ':' and ',' removed from names, as A1111 does
        ({}, ""),
    ],
)
def test_format_ti_hashes(hashes, expected):
    assert format_ti_hashes(hashes) == expected


@pytest.mark.parametrize(
    "hashes, message_part",
    [({":,": "01"}, "is empty"), ({"a:b": "01", "ab": "02"}, "both read as"), ({"a": "0:1"}, "without ':'"),
     ({"a": ""}, "non-empty")],
)
def test_format_ti_hashes_refuses_what_would_not_read_back(hashes, message_part):
    with pytest.raises(ConfigError, match=message_part):
        format_ti_hashes(hashes)


def test_ti_hashes_round_trip_through_infotext():
    hashes = {"tree": "0123456789ab", "night sky": "ba9876543210"}
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "TI hashes": format_ti_hashes(hashes)})
    assert parse_ti_hashes(parse_infotext(text)[2]["TI hashes"]) == hashes


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"Sampler": "DPM++ 2M", "Schedule type": "Karras"}, ("DPM++ 2M", "Karras")),
        ({"Sampler": "DPM++ 2M Karras"}, ("DPM++ 2M", "Karras")),
        ({"Sampler": "DPM++ 2M SDE Exponential"}, ("DPM++ 2M SDE", "Exponential")),
        ({"Sampler": "DPM++ 2M SDE"}, ("DPM++ 2M SDE", "Automatic")),
        ({"Sampler": "Euler a"}, ("Euler a", "Automatic")),
        ({"Sampler": "DDIM"}, ("DDIM", "Automatic")),
        ({"Sampler": "Euler SGM Uniform"}, ("Euler", "SGM Uniform")),
        ({"Sampler": "Karras"}, ("Karras", "Automatic")),
        ({"Steps": "20"}, (None, "Automatic")),
        ({"Sampler": ""}, (None, "Automatic")),
    ],
)
def test_sampler_and_schedule(params, expected):
    assert sampler_and_schedule(params) == expected


def test_sampler_and_schedule_from_an_old_infotext():
    _, _, params = parse_infotext("p\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1")
    assert params["Sampler"] == "DPM++ 2M Karras"  # the parser leaves values as written
    assert sampler_and_schedule(params) == ("DPM++ 2M", "Karras")


@pytest.mark.parametrize("value, expected", [("512x768", (512, 768)), (" 64x64 ", (64, 64))])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["512", "512x", "x512", "512 x 512", "axb", "-1x5"])
def test_parse_size_refuses_other_text(value):
    with pytest.raises(ConfigError, match="is not <width>x<height>"):
        parse_size(value)
