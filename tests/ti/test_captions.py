"""Captions: file-name words, sidecar files, tag shuffle and dropout."""

import random

import pytest

from ti.captions import apply_tag_operations, caption_path_for, filewords_from_filename, read_caption
from ti.errors import ConfigError, TIError


@pytest.mark.parametrize(
    "filename, word_regex, join_string, expected",
    [
        ("00012-0-a red car.png", "", " ", "a red car"),
        ("a red car.png", "", " ", "a red car"),
        ("123.png", "", " ", ""),
        ("2023-01-05 sunset.jpg", "", " ", "sunset"),
        ("-- dash start.webp", "", " ", "dash start"),
        ("car 2.png", "", " ", "car 2"),  # only digits at the start go
        ("folder/00001-cat.photo.jpg", "", " ", "cat.photo"),
        ("no_extension", "", " ", "no_extension"),
        ("00012-0-a_red_car.png", r"[a-z]+", " ", "a red car"),
        ("00012-0-a_red_car.png", r"[a-z]+", ", ", "a, red, car"),
        ("00012-0-a_red_car.png", r"[a-z]+", "", "aredcar"),
        ("tag1 tag2 x.png", r"(tag)\d", "+", "tag+tag"),  # one group: its text is kept
        ("日本の猫.png", r"\w", "-", "日-本-の-猫"),
        ("nothing here.png", r"\d+", " ", ""),
    ],
)
def test_filewords_from_filename(filename, word_regex, join_string, expected):
    assert filewords_from_filename(filename, word_regex, join_string) == expected


@pytest.mark.parametrize(
    "word_regex, message_part",
    [("[a-z", "is not a valid regular expression"), ("(a)(b)", "has 2 capture groups")],
)
def test_bad_word_regex_is_a_config_error(word_regex, message_part):
    with pytest.raises(ConfigError) as raised:
        filewords_from_filename("x.png", word_regex)
    assert raised.value.field == "filename word regex"
    assert message_part in str(raised.value)
    assert word_regex in str(raised.value)


@pytest.mark.parametrize(
    "sidecar_bytes, expected",
    [
        (None, "a red car"),  # no sidecar: the file name's words
        (b"a blue boat\n", "a blue boat"),
        (b"  padded, tags \r\n\n", "padded, tags"),
        (b"two\nlines\n", "two\nlines"),
        ("\ufeffbom caf\u00e9".encode("utf-8"), "bom caf\u00e9"),
        ("caf\u00e9 cr\u00e8me".encode("latin-1"), "caf\u00e9 cr\u00e8me"),  # not UTF-8: read as Latin-1
        (b"", ""),  # an empty sidecar still wins
    ],
)
def test_read_caption(tmp_path, sidecar_bytes, expected):
    image = tmp_path / "00012-0-a red car.png"
    image.write_bytes(b"not really a png")
    if sidecar_bytes is not None:
        (tmp_path / "00012-0-a red car.txt").write_bytes(sidecar_bytes)
    assert read_caption(image) == expected


def test_read_caption_word_regex_applies_to_file_names_only(tmp_path):
    named = tmp_path / "00001-a_b.png"
    captioned = tmp_path / "00002-c_d.png"
    (tmp_path / "00002-c_d.txt").write_text("sidecar_text", encoding="utf-8")
    assert read_caption(named, r"[a-z]", "+") == "a+b"
    assert read_caption(captioned, r"[a-z]", "+") == "sidecar_text"


def test_read_caption_names_an_unreadable_sidecar(tmp_path):
    (tmp_path / "img.txt").mkdir()  # exists, but is a folder
    with pytest.raises(TIError, match=r"img\.txt: cannot read caption"):
        read_caption(tmp_path / "img.png")


def test_caption_path_for():
    assert caption_path_for("a/b.c.png").as_posix() == "a/b.c.txt"


def test_no_operations_leave_the_caption_alone_and_use_no_randomness():
    rng = random.Random(1)
    state = rng.getstate()
    assert apply_tag_operations(" a cat, red ,x", shuffle=False, dropout=0.0, rng=rng) == " a cat, red ,x"
    assert rng.getstate() == state


def _a1111_tag_operations(caption, shuffle, dropout, rng):
    """A1111's dataset code, as the reference for our draws."""
    tags = caption.split(",")
    if dropout != 0:
        tags = [t for t in tags if rng.random() > dropout]
    if shuffle:
        rng.shuffle(tags)
    return ",".join(tags)


@pytest.mark.parametrize("shuffle, dropout", [(True, 0.0), (False, 0.5), (True, 0.3), (True, 1.0), (False, 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_tag_operations_match_a1111_draw_for_draw(shuffle, dropout, seed):
    caption = "a cat, sitting, red collar, grass, sunny, 1girl"
    ours = apply_tag_operations(caption, shuffle, dropout, random.Random(seed))
    assert ours == _a1111_tag_operations(caption, shuffle, dropout, random.Random(seed))


@pytest.mark.parametrize("seed", range(5))
def test_shuffle_keeps_every_tag_with_its_whitespace(seed):
    caption = "a cat, sitting, red collar, grass"
    shuffled = apply_tag_operations(caption, shuffle=True, dropout=0.0, rng=random.Random(seed))
    assert sorted(shuffled.split(",")) == sorted(caption.split(","))


def test_shuffle_changes_the_order_for_some_seed():
    caption = "a, b, c, d, e, f"
    results = {apply_tag_operations(caption, True, 0.0, random.Random(seed)) for seed in range(10)}
    assert len(results) > 1


@pytest.mark.parametrize(
    "dropout, expected", [(1.0, ""), (0.0, "a, b, c")],
)
def test_dropout_extremes(dropout, expected):
    assert apply_tag_operations("a, b, c", False, dropout, random.Random(0)) == expected


def test_dropout_drops_about_the_right_share():
    rng = random.Random(7)
    caption = ",".join(str(i) for i in range(2000))
    kept = apply_tag_operations(caption, False, 0.25, rng).split(",")
    assert 1400 < len(kept) < 1600
    assert kept == sorted(kept, key=int)  # order kept without shuffle


def test_same_seed_same_result():
    caption = "a, b, c, d, e, f, g"
    first = apply_tag_operations(caption, True, 0.4, random.Random(123))
    second = apply_tag_operations(caption, True, 0.4, random.Random(123))
    assert first == second


@pytest.mark.parametrize("dropout", [-0.1, 1.5, float("nan")])
def test_bad_dropout_is_a_config_error(dropout):
    with pytest.raises(ConfigError) as raised:
        apply_tag_operations("a, b", False, dropout, random.Random(0))
    assert raised.value.field == "tag dropout"


def test_non_utf8_file_name_reads_as_latin1():
    import os

    name = os.fsdecode(b"00007-0-caf\xe9 cat.png")
    assert filewords_from_filename(name) == "caf\xe9 cat"
