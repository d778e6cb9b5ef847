"""Preprocessing: options, image loading, each mode, captions, names, progress and cancel."""

import math
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ti.crops import (
    aspect_error,
    choose_auto_crop_size,
    cover_crop_resize,
    plan_split,
    split_oversized,
    split_tile_offsets,
)
from ti.errors import ConfigError, TIError
from ti.focal_crop import (
    FocalWeights,
    corner_points,
    entropy_points,
    find_focal_point,
    focal_crop,
    opencv_face_detector,
)
from ti.image_loading import load_image_for_training
from ti.preprocess import (
    PreprocessConfig,
    caption_to_filename,
    combine_captions,
    output_basename,
    preprocess_folder,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def solid(size, colour=(128, 128, 128)) -> Image.Image:
    return Image.new("RGB", size, colour)


def side_by_side(size, left=RED, right=BLUE) -> Image.Image:
    """Left half one colour, right half another: shows flips and rotations."""
    image = solid(size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def noise(size, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def folder_with(tmp_path: Path, files: dict) -> Path:
    """Write {name: Image or bytes or str} into tmp_path/src."""
    source = tmp_path / "src"
    source.mkdir()
    for name, content in files.items():
        if isinstance(content, Image.Image):
            content.save(source / name)
        elif isinstance(content, bytes):
            (source / name).write_bytes(content)
        else:
            (source / name).write_text(content, encoding="utf-8")
    return source


def config_for(tmp_path, **options) -> PreprocessConfig:
    return PreprocessConfig(source=tmp_path / "src", destination=tmp_path / "dst", **{"width": 64, "height": 64, **options})


def output_names(tmp_path, suffix=".png") -> list[str]:
    return sorted(p.name for p in (tmp_path / "dst").iterdir() if p.suffix == suffix)


class CountingCaptioner:
    """Stand-in for BLIP: numbered captions, so each call is visible."""

    def __init__(self, text="a photo of a thing"):
        self.text = text
        self.calls = 0

    def caption(self, image):
        self.calls += 1
        return f"{self.text} {self.calls}"


# --- options -------------------------------------------------------------------------------


def test_defaults_are_a1111s(tmp_path):
    config = PreprocessConfig(source=tmp_path / "a", destination=tmp_path / "b")
    assert (config.width, config.height, config.existing_caption) == (512, 512, "ignore")
    assert (config.split_threshold, config.split_overlap) == (0.5, 0.2)
    assert (config.focal_face_weight, config.focal_entropy_weight, config.focal_edges_weight) == (0.9, 0.15, 0.5)
    assert (config.auto_crop_min_size, config.auto_crop_max_size) == (384, 768)
    assert (config.auto_crop_min_area, config.auto_crop_max_area, config.auto_crop_error_threshold) == (4096, 409600, 0.1)
    assert not any([config.flip, config.split, config.focal_crop, config.auto_crop, config.caption])


@pytest.mark.parametrize(
    "options, field",
    [
        ({"width": 0}, "width"),
        ({"height": 100}, "height"),  # not a multiple of 8
        ({"width": 8192}, "width"),
        ({"existing_caption": "keep"}, "existing caption"),
        ({"split_threshold": 1.5}, "split threshold"),
        ({"split_overlap": 0.95}, "split overlap"),
        ({"split_overlap": -0.1}, "split overlap"),
        ({"focal_edges_weight": -1}, "focal edges weight"),
        ({"auto_crop_min_size": 100}, "auto crop min size"),
        ({"auto_crop_min_size": 768, "auto_crop_max_size": 384}, "auto crop min size"),
        ({"auto_crop_min_area": 0}, "auto crop min area"),
        ({"auto_crop_objective": "biggest"}, "auto crop objective"),
        ({"auto_crop_error_threshold": 2}, "auto crop error threshold"),
        ({"caption": True, "caption_model": " "}, "caption model"),
        ({"source": ""}, "source"),
        ({"destination": ""}, "destination"),
    ],
)
def test_bad_options_name_their_field(tmp_path, options, field):
    values = {"source": tmp_path / "src", "destination": tmp_path / "dst", **options}
    with pytest.raises(ConfigError) as caught:
        PreprocessConfig(**values)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_whole_floats_from_ui_widgets_are_accepted(tmp_path):
    config = PreprocessConfig(source=tmp_path / "a", destination=tmp_path / "b", width=512.0, height=768.0)
    assert (config.width, config.height) == (512, 768) and isinstance(config.width, int)


@pytest.mark.parametrize("destination", ["src", "src/out", "src/./out/deeper", "."])
def test_same_or_nested_folders_refused(tmp_path, destination):
    source = tmp_path / "src"
    source.mkdir()
    with pytest.raises(ConfigError) as caught:
        PreprocessConfig(source=source, destination=tmp_path / destination)
    assert caught.value.field == "destination"


def test_sibling_folders_with_a_common_prefix_are_fine(tmp_path):
    PreprocessConfig(source=tmp_path / "pics", destination=tmp_path / "pics-out")


def test_missing_source_folder(tmp_path):
    with pytest.raises(ConfigError, match="source: .*not a folder"):
        preprocess_folder(config_for(tmp_path))


# --- loading -------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    stored = side_by_side((40, 20))  # red left, blue right, as stored in the file
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge shows at the top
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_image_for_training(tmp_path / "phone.jpg")
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def png_16bit_rgb(path: Path, colour16: tuple[int, int, int], size=(4, 4)) -> None:
    """Write a 16-bit-per-channel RGB PNG by hand (Pillow cannot write one)."""
    width, height = size
    rows = b"".join(b"\x00" + struct.pack(">HHH", *colour16) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)  # index 0 red, index 1 black
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1  # black is see-through
    return image


MODE_CASES = [
    # (name, how to make the file, expected RGB of pixel (0, 0), of pixel (1, 0))
    ("rgba.png", lambda: Image.frombytes("RGBA", (2, 1), bytes([255, 0, 0, 255, 0, 0, 0, 0])), RED, WHITE),
    ("half.png", lambda: Image.frombytes("RGBA", (2, 1), bytes([0, 0, 255, 128, 0, 0, 255, 255])), (127, 127, 255), BLUE),
    ("palette.png", palette_with_transparency, RED, WHITE),
    ("palette.gif", palette_with_transparency, RED, WHITE),
    ("la.png", lambda: Image.frombytes("LA", (2, 1), bytes([0, 255, 0, 0])), (0, 0, 0), WHITE),
    ("grey.png", lambda: Image.frombytes("L", (2, 1), bytes([10, 200])), (10, 10, 10), (200, 200, 200)),
    ("grey16.png", lambda: Image.fromarray(np.array([[65535, 32896]], dtype=np.uint16)), WHITE, (128, 128, 128)),
    ("int32.tif", lambda: Image.fromarray(np.array([[65535, 0]], dtype=np.int32)), WHITE, (0, 0, 0)),
    ("float.tif", lambda: Image.fromarray(np.array([[1.0, 0.5]], dtype=np.float32)), WHITE, (128, 128, 128)),
    ("bits.png", lambda: Image.frombytes("1", (2, 1), bytes([0b10000000])), WHITE, (0, 0, 0)),
    ("cmyk.jpg", lambda: Image.new("CMYK", (2, 1), (0, 0, 0, 0)), WHITE, WHITE),
]


@pytest.mark.parametrize("name, make, first, second", MODE_CASES, ids=[case[0] for case in MODE_CASES])
def test_every_image_mode_becomes_rgb(tmp_path, name, make, first, second):
    make().save(tmp_path / name)
    loaded = load_image_for_training(tmp_path / name)
    assert loaded.mode == "RGB" and loaded.size == (2, 1)
    tolerance = 3 if name.endswith(".jpg") else 1
    for x, expected in ((0, first), (1, second)):
        assert np.abs(np.subtract(loaded.getpixel((x, 0)), expected)).max() <= tolerance, (x, loaded.getpixel((x, 0)))


def test_16_bit_rgb_png(tmp_path):
    png_16bit_rgb(tmp_path / "deep.png", (65535, 32896, 0))
    loaded = load_image_for_training(tmp_path / "deep.png")
    assert loaded.mode == "RGB" and loaded.size == (4, 4)
    assert np.abs(np.subtract(loaded.getpixel((1, 1)), (255, 128, 0))).max() <= 1


def test_unreadable_file_raises_naming_it(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"not a picture")
    with pytest.raises(TIError, match="fake.png: not a readable picture"):
        load_image_for_training(tmp_path / "fake.png")


def test_unreadable_files_are_skipped_and_listed(tmp_path):
    good = noise((80, 80))
    good.save(tmp_path / "whole.jpg")
    truncated = (tmp_path / "whole.jpg").read_bytes()[:300]
    source = folder_with(tmp_path, {"a.png": good, "b.png": b"junk", "c.jpg": truncated, "d.png": good,
                                    "d.txt": "a caption, not a picture", ".hidden.png": b"junk"})  # fmt: skip
    (source / "subfolder").mkdir()
    result = preprocess_folder(config_for(tmp_path))
    assert sorted(s.path.name for s in result.skipped) == ["b.png", "c.jpg"]
    assert all("not a readable picture" in s.reason for s in result.skipped)
    # the index is the position in the sorted file list, so a skipped file leaves a gap
    assert output_names(tmp_path) == ["00000-0-a.png", "00003-0-d.png"]
    assert (result.sources_done, result.sources_total) == (4, 4)


# --- modes ---------------------------------------------------------------------------------


def test_default_is_cover_crop_and_resize(tmp_path):
    thirds = solid((150, 50), RED)
    thirds.paste(GREEN, (50, 0, 100, 50))
    thirds.paste(BLUE, (100, 0, 150, 50))
    folder_with(tmp_path, {"thirds.png": thirds})
    result = preprocess_folder(config_for(tmp_path))
    assert [p.name for p in result.images] == ["00000-0-thirds.png"]
    output = Image.open(result.images[0])
    assert output.size == (64, 64) and output.mode == "RGB"
    assert output.getpixel((32, 32)) == GREEN
    assert output.getpixel((1, 1))[1] > 200  # the red and blue sides were cropped away
    assert not (tmp_path / "dst" / "00000-0-thirds.txt").exists()


def test_cover_crop_keeps_the_centre_of_a_tall_picture():
    tall = solid((50, 150), RED)
    tall.paste(GREEN, (0, 50, 50, 100))
    output = cover_crop_resize(tall, 64, 128)
    assert output.size == (64, 128)
    assert output.getpixel((32, 64)) == GREEN and output.getpixel((32, 2))[0] > 200


def test_flip_adds_a_mirrored_copy_after_each_output(tmp_path):
    folder_with(tmp_path, {"pic.png": side_by_side((64, 64)), "two.png": side_by_side((64, 64), GREEN, BLUE)})
    result = preprocess_folder(config_for(tmp_path, flip=True))
    assert [p.name for p in result.images] == ["00000-0-pic.png", "00000-1-pic.png", "00001-0-two.png", "00001-1-two.png"]
    original, mirrored = (np.asarray(Image.open(p)) for p in result.images[:2])
    assert np.array_equal(mirrored, original[:, ::-1])
    assert tuple(original[10, 5]) == RED and tuple(mirrored[10, 5]) == BLUE


@pytest.mark.parametrize(
    "long_side, tile, overlap, offsets",
    [
        (256, 64, 0.2, [0, 48, 96, 144, 192]),  # ceil((256-12.8)/51.2) = 5 tiles
        (192, 64, 0.2, [0, 42, 85, 128]),  # ceil(3.5) = 4; int(i*128/3)
        (128, 64, 0.0, [0, 64]),
        (100, 64, 0.0, [0, 36]),
        (256, 64, 0.5, [0, 32, 64, 96, 128, 160, 192]),  # ceil((256-32)/32) = 7
        (64, 64, 0.2, [0]),
        (65, 64, 0.5, [0, 1]),  # A1111 would divide by zero when the count came out as 1
    ],
)
def test_split_tile_offsets_follow_a1111(long_side, tile, overlap, offsets):
    assert split_tile_offsets(long_side, tile, overlap) == offsets


@pytest.mark.parametrize("long_side, tile, overlap", [(256, 64, 0.9), (1000, 512, 0.2), (777, 96, 0.35), (2048, 512, 0.0)])
def test_split_tile_offsets_equal_a1111_float_for_float(long_side, tile, overlap):
    count = math.ceil((long_side - tile * overlap) / (tile * (1.0 - overlap)))  # A1111's split_pic, verbatim
    step = (long_side - tile) / (count - 1)
    assert split_tile_offsets(long_side, tile, overlap) == [int(step * i) for i in range(count)]


def gradient(size, vertical=True) -> Image.Image:
    """Each row (or column) has the grey value of its index: a tile's first line tells its offset."""
    width, height = size
    values = np.arange(height if vertical else width, dtype=np.uint8)
    grid = np.repeat(values[:, None], width, axis=1) if vertical else np.repeat(values[None, :], height, axis=0)
    return Image.fromarray(np.stack([grid] * 3, axis=-1))


def test_split_tall_picture_into_tiles_at_a1111_offsets(tmp_path):
    folder_with(tmp_path, {"tall.png": gradient((64, 256))})  # ratio (64*64)/(256*64) = 0.25 <= 0.5
    result = preprocess_folder(config_for(tmp_path, split=True))
    assert [p.name for p in result.images] == [f"00000-{i}-tall.png" for i in range(5)]
    tops = [np.asarray(Image.open(p))[0, 0, 0] for p in result.images]
    assert tops == [0, 48, 96, 144, 192]
    assert all(Image.open(p).size == (64, 64) for p in result.images)


def test_split_wide_picture_along_its_width(tmp_path):
    folder_with(tmp_path, {"wide.png": gradient((192, 64), vertical=False)})
    result = preprocess_folder(config_for(tmp_path, split=True, split_overlap=0.2))
    lefts = [np.asarray(Image.open(p))[0, 0, 0] for p in result.images]
    assert lefts == [0, 42, 85, 128]


def test_picture_under_the_threshold_is_not_split(tmp_path):
    folder_with(tmp_path, {"almost.png": noise((64, 100))})  # ratio 0.64 > 0.5
    result = preprocess_folder(config_for(tmp_path, split=True))
    assert [p.name for p in result.images] == ["00000-0-almost.png"]
    result = preprocess_folder(config_for(tmp_path, split=True, split_threshold=0.7))
    assert len(result.images) == 2


def test_split_axis_is_relative_to_the_target():
    # A portrait picture that is still wider in shape than a tall target: A1111 never split it.
    plan = plan_split((600, 800), width=64, height=256)
    assert not plan.vertical and plan.ratio == pytest.approx((800 * 64) / (600 * 256))
    tiles = split_oversized(noise((600, 800)), 64, 256, 0.2)
    assert len(tiles) == 4 and all(tile.size == (64, 256) for tile in tiles)  # 192 wide: ceil(179.2/51.2)
    assert plan_split((64, 256), 64, 64) == plan_split((64, 256), 512, 512)


@pytest.mark.parametrize(
    "image_size, options, expected",
    [
        ((1000, 500), {}, (768, 384)),  # exact 2:1, largest area
        ((1000, 1000), {}, (640, 640)),  # area capped at 640*640
        ((1000, 1000), {"max_area": 1_000_000}, (768, 768)),
        ((1000, 700), {}, (768, 512)),  # largest area within 10% aspect error (err 0.048)
        ((1000, 700), {"objective": "min-error"}, (640, 448)),  # smallest error, then area
        ((2000, 100), {}, None),  # nothing that long fits
        ((600, 400), {"min_size": 512, "max_size": 512}, None),
    ],
)
def test_auto_crop_size_choice(image_size, options, expected):
    chosen = choose_auto_crop_size(image_size, **options)
    assert chosen == expected
    if chosen:
        assert aspect_error(image_size, *chosen) <= 0.1


def test_auto_crop_writes_the_chosen_size_and_lists_misfits(tmp_path):
    folder_with(tmp_path, {"a.png": noise((200, 100)), "b.png": noise((400, 20))})
    result = preprocess_folder(config_for(tmp_path, auto_crop=True, auto_crop_min_size=64, auto_crop_max_size=256))
    assert [p.name for p in result.images] == ["00000-0-a.png"]
    assert Image.open(result.images[0]).size == (256, 128)
    assert [s.path.name for s in result.skipped] == ["b.png"]
    assert "no auto-crop size fits 400x20" in result.skipped[0].reason


def test_every_enabled_mode_saves_its_own_outputs(tmp_path):
    folder_with(tmp_path, {"tall.png": noise((64, 256))})
    config = config_for(tmp_path, split=True, focal_crop=True, keep_original_size=True, flip=True, focal_face_weight=0)
    result = preprocess_folder(config)
    sizes = [Image.open(p).size for p in result.images]
    assert sizes == [(64, 64)] * 10 + [(64, 64)] * 2 + [(64, 256)] * 2  # 5 tiles, focal, original; each flipped
    assert [p.name for p in result.images][-1] == "00000-13-tall.png"


# --- focal crop ----------------------------------------------------------------------------


def detailed_patch_picture(patch_left=190) -> Image.Image:
    """A flat grey 256x64 picture with a 32x32 noisy patch: the only thing worth looking at."""
    image = solid((256, 64))
    image.paste(noise((32, 32), seed=1), (patch_left, 16))
    return image


@pytest.mark.parametrize("weights", [FocalWeights(0, 0, 1), FocalWeights(0, 1, 0), FocalWeights()])
def test_focal_point_finds_the_detail(weights):
    x, y = find_focal_point(detailed_patch_picture(), 64, 64, weights)
    assert 170 <= x <= 240 and 10 <= y <= 54


def test_focal_crop_contains_the_detail():
    cropped = focal_crop(detailed_patch_picture(), 64, 64, FocalWeights())
    assert cropped.size == (64, 64)
    assert np.asarray(cropped).std() > 30  # the noisy patch is inside
    centre_cropped = cover_crop_resize(detailed_patch_picture(), 64, 64)
    assert np.asarray(centre_cropped).std() < 1  # while the centre is flat grey


def test_corner_points_ignore_a_watermark_at_the_bottom():
    image = solid((200, 200))
    image.paste(noise((60, 15), seed=2), (130, 185))  # "signature" in the bottom tenth
    assert corner_points(image) == []
    image.paste(noise((30, 30), seed=3), (20, 20))
    points = corner_points(image)
    assert points and all(15 <= x <= 55 and 15 <= y <= 55 for x, y in points)
    assert len(points) <= 100


def test_flat_picture_is_cropped_at_its_centre():
    assert entropy_points(solid((256, 64)), 64, 64) == []
    assert find_focal_point(solid((256, 64)), 64, 64) == (128, 32)


def test_face_points_pull_by_their_weight():
    picture = detailed_patch_picture()
    faces = lambda grey: [(10, 20, 20, 30)]  # noqa: E731 - one face at the far left
    face_only = find_focal_point(picture, 64, 64, FocalWeights(faces=1, entropy=0, edges=0), faces)
    assert face_only == pytest.approx((20, 20 + 30 * 0.33))
    edges_x, edges_y = np.mean(corner_points(picture), axis=0)
    (entropy_x, entropy_y), = entropy_points(picture, 64, 64)
    mixed = find_focal_point(picture, 64, 64, FocalWeights(faces=0.9, entropy=0.15, edges=0.5), faces)
    expected_x = (0.9 * 20 + 0.15 * entropy_x + 0.5 * edges_x) / 1.55
    assert mixed[0] == pytest.approx(expected_x)
    # a kind that finds nothing takes no share of the weight
    no_faces = find_focal_point(picture, 64, 64, FocalWeights(faces=0.9, entropy=0.15, edges=0.5), lambda grey: [])
    assert no_faces[0] == pytest.approx((0.15 * entropy_x + 0.5 * edges_x) / 0.65)


def test_opencv_face_detector_is_used_when_installed(tmp_path, monkeypatch):
    class FakeCascade:
        def __init__(self, path):
            self.path = path

        def empty(self):
            return False

        def detectMultiScale(self, grey, **options):
            return [(1, 2, 3, 4)]

    fake_cv2 = types.SimpleNamespace(data=types.SimpleNamespace(haarcascades="/cascades/"), CascadeClassifier=FakeCascade)
    monkeypatch.setitem(sys.modules, "cv2", fake_cv2)
    detector = opencv_face_detector()
    assert detector(np.zeros((50, 50), np.uint8)) == [(1.0, 2.0, 3.0, 4.0)]
    folder_with(tmp_path, {"face.png": detailed_patch_picture()})
    result = preprocess_folder(config_for(tmp_path, focal_crop=True))
    assert len(result.images) == 1 and result.notes == []


def test_missing_opencv_is_noted_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    folder_with(tmp_path, {"a.png": detailed_patch_picture()})
    result = preprocess_folder(config_for(tmp_path, focal_crop=True))
    assert len(result.images) == 1 and "OpenCV" in result.notes[0]
    assert preprocess_folder(config_for(tmp_path, focal_crop=True, focal_face_weight=0)).notes == []


def test_keep_original_size(tmp_path):
    folder_with(tmp_path, {"big.png": noise((120, 90))})
    result = preprocess_folder(config_for(tmp_path, keep_original_size=True))
    assert [Image.open(p).size for p in result.images] == [(120, 90)]


# --- captions and names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "new, existing, action, expected",
    [
        ("a cat", "old tags", "ignore", "a cat"),
        ("a cat", "old tags", "copy", "old tags"),
        ("a cat", "old tags\n", "prepend", "old tags, a cat"),
        ("a cat", " old tags ", "append", "a cat, old tags"),
        ("", "old tags", "prepend", "old tags"),
        ("", "old tags", "append", "old tags"),
        ("a cat", None, "copy", "a cat"),
        ("a cat", "   ", "prepend", "a cat"),
        ("", None, "append", ""),
    ],
)
def test_combine_captions(new, existing, action, expected):
    assert combine_captions(new, existing, action) == expected


@pytest.mark.parametrize(
    "action, captioned, with_existing, expected",
    [
        ("ignore", True, True, "new 1"),
        ("copy", True, True, "tag1, tag2"),
        ("prepend", True, True, "tag1, tag2, new 1"),
        ("append", True, True, "new 1, tag1, tag2"),
        ("copy", False, True, "tag1, tag2"),
        ("prepend", False, True, "tag1, tag2"),
        ("ignore", False, True, None),
        ("copy", True, False, "new 1"),
        ("append", True, False, "new 1"),
        ("prepend", False, False, None),
    ],
)
def test_caption_files_for_each_existing_caption_action(tmp_path, action, captioned, with_existing, expected):
    files = {"pic.png": noise((64, 64))}
    if with_existing:
        files["pic.txt"] = "tag1, tag2\n"
    folder_with(tmp_path, files)
    captioner = CountingCaptioner("new")
    preprocess_folder(config_for(tmp_path, existing_caption=action, caption=captioned), captioner=captioner)
    caption_file = tmp_path / "dst" / "00000-0-pic.txt"
    assert (caption_file.read_text(encoding="utf-8") if caption_file.exists() else None) == expected
    # "copy" with an existing caption never runs the captioner; without --caption it never runs
    assert captioner.calls == (1 if captioned and not (action == "copy" and with_existing) else 0)


def test_existing_caption_with_a_byte_order_mark(tmp_path):
    folder_with(tmp_path, {"pic.png": noise((64, 64))})
    (tmp_path / "src" / "pic.txt").write_bytes("\ufefftags from notepad".encode("utf-8"))
    preprocess_folder(config_for(tmp_path, existing_caption="copy"))
    assert (tmp_path / "dst" / "00000-0-pic.txt").read_text(encoding="utf-8") == "tags from notepad"


def test_flipped_copy_reuses_the_caption_and_pieces_get_their_own(tmp_path):
    folder_with(tmp_path, {"tall.png": noise((64, 160))})  # 4 tiles at 64x64... ratio 0.4
    captioner = CountingCaptioner("piece")
    result = preprocess_folder(config_for(tmp_path, split=True, flip=True, caption=True), captioner=captioner)
    texts = [p.read_text(encoding="utf-8") for p in result.captions]
    tiles = len(split_tile_offsets(160, 64, 0.2))
    assert captioner.calls == tiles
    assert texts == [f"piece {i // 2 + 1}" for i in range(2 * tiles)]
    assert [p.stem for p in result.captions] == [p.stem for p in result.images]


def test_caption_in_filename(tmp_path):
    folder_with(tmp_path, {"IMG_0001.jpg": noise((64, 64)), "IMG_0002.jpg": noise((64, 64))})

    class SlashyCaptioner:
        def caption(self, image):
            return 'a red/blue "car": on a road?'

    config = config_for(tmp_path, caption=True, caption_in_filename=True, flip=True)
    result = preprocess_folder(config, captioner=SlashyCaptioner())
    assert [p.name for p in result.images] == [
        "00000-0-a redblue car on a road.png", "00000-1-a redblue car on a road.png",
        "00001-0-a redblue car on a road.png", "00001-1-a redblue car on a road.png",
    ]  # fmt: skip
    caption_file = tmp_path / "dst" / "00000-0-a redblue car on a road.txt"
    assert caption_file.read_text(encoding="utf-8") == 'a red/blue "car": on a road?'


def test_caption_in_filename_without_a_caption_keeps_the_stem(tmp_path):
    folder_with(tmp_path, {"IMG_0001.jpg": noise((64, 64))})
    result = preprocess_folder(config_for(tmp_path, caption_in_filename=True))
    assert [p.name for p in result.images] == ["00000-0-IMG_0001.png"]


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a cat on a mat", "a cat on a mat"),
        ('what? a "quote" <tag> | C:\\path/x', "what a quote tag Cpathx"),
        ("tabs\tand\nnewlines", "tabs and newlines"),
        ("ends with a dot.", "ends with a dot"),
        ("word " * 100, ("word " * 36).strip()),  # cut at a word boundary under 180 bytes
        ("é" * 200, "é" * 90),  # one over-long word: cut by bytes, never mid-character
        ("???", ""),
    ],
)
def test_caption_to_filename(caption, expected):
    assert caption_to_filename(caption) == expected
    assert len(caption_to_filename(caption).encode("utf-8")) <= 180


def test_output_basename():
    assert output_basename(7, 2, "photo") == "00007-2-photo"
    assert output_basename(12345, 0, "photo", "a dog") == "12345-0-a dog"
    assert output_basename(0, 0, "photo", "///") == "00000-0-photo"


def test_stale_caption_of_an_earlier_run_is_removed(tmp_path):
    folder_with(tmp_path, {"pic.png": noise((64, 64))})
    preprocess_folder(config_for(tmp_path, caption=True), captioner=CountingCaptioner())
    assert (tmp_path / "dst" / "00000-0-pic.txt").exists()
    result = preprocess_folder(config_for(tmp_path))
    assert not (tmp_path / "dst" / "00000-0-pic.txt").exists() and result.captions == []
    assert not list((tmp_path / "dst").glob("*.partial"))


# --- progress and cancel ---------------------------------------------------------------------


def test_progress_reports_each_file(tmp_path):
    folder_with(tmp_path, {f"{i}.png": noise((64, 64), seed=i) for i in range(3)})
    calls = []
    result = preprocess_folder(config_for(tmp_path), on_progress=lambda *args: calls.append(args))
    assert calls == [(0, 3, ""), (1, 3, "0.png"), (2, 3, "1.png"), (3, 3, "2.png")]
    assert not result.cancelled and result.summary() == "3 of 3 files: wrote 3 pictures and 0 captions"


def test_cancel_mid_way_keeps_what_was_written(tmp_path):
    folder_with(tmp_path, {f"{i}.png": noise((64, 64), seed=i) for i in range(5)})
    calls = []
    result = preprocess_folder(
        config_for(tmp_path, flip=True),
        on_progress=lambda *args: calls.append(args),
        should_stop=lambda: len(calls) > 2,  # after the start call and two files
    )
    assert result.cancelled and result.sources_done == 2 and result.sources_total == 5
    assert output_names(tmp_path) == ["00000-0-0.png", "00000-1-0.png", "00001-0-1.png", "00001-1-1.png"]
    assert calls[-1] == (2, 5, "1.png")
    assert result.summary() == "2 of 5 files: wrote 4 pictures and 0 captions (cancelled)"


@pytest.mark.parametrize("field, value", [("auto_crop_min_area", None), ("auto_crop_max_area", "big")])
def test_auto_crop_area_must_be_a_number(tmp_path, field, value):
    from ti.errors import ConfigError
    from ti.preprocess import PreprocessConfig

    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError, match="area"):
        PreprocessConfig(source=tmp_path / "src", destination=tmp_path / "dst", **{field: value})
