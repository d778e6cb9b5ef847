"""Listing, reading, captions and aspect buckets of training images."""

import math

import numpy as np
import pytest
from PIL import Image

from ti.train.dataset import (
    BUCKET_STEP,
    PreparedImage,
    SkippedImage,
    candidate_buckets,
    choose_bucket,
    crop_geometry,
    iter_prepared_images,
    list_image_files,
    native_bucket,
)


def test_candidate_buckets_are_multiples_of_64_within_the_area():
    buckets = candidate_buckets(512, 512)
    assert (512, 512) in buckets
    for width, height in buckets:
        assert width % BUCKET_STEP == 0 and height % BUCKET_STEP == 0
        assert width * height <= 512 * 512
        assert 1 / 4 <= width / height <= 4
    assert candidate_buckets(64, 64) == [(64, 64)]
    assert candidate_buckets(72, 72) == [(64, 64)]  # 72 is a valid width; buckets round down


@pytest.mark.parametrize("image_size, expected", [
    ((512, 512), (512, 512)),
    ((100, 100), (512, 512)),  # small images are scaled up, as A1111 does
    ((768, 512), (576, 384)),  # 3:2 exactly
    ((512, 768), (384, 576)),
    ((1024, 512), (640, 320)),  # 2:1 exactly
    ((1024, 768), (576, 448)),  # close to 4:3 with nearly all the area
])
def test_choose_bucket_keeps_the_shape(image_size, expected):
    assert choose_bucket(image_size, candidate_buckets(512, 512)) == expected


def test_choose_bucket_for_a_wide_target_area():
    buckets = candidate_buckets(768, 512)
    assert choose_bucket((768, 512), buckets) == (768, 512)
    width, height = choose_bucket((1920, 1080), buckets)
    assert abs(math.log((width / height) / (1920 / 1080))) < 0.1


def test_native_bucket_rounds_down_to_multiples_of_64():
    assert native_bucket((130, 70)) == (128, 64)
    assert native_bucket((640, 480)) == (640, 448)
    assert native_bucket((50, 100)) is None


def test_listing_is_flat_sorted_and_images_only(tmp_path, kit):
    kit.write_images(tmp_path, 2, names=["b.png", "a.jpg"])
    kit.write_images(tmp_path / "sub", 1, names=["c.png"])
    (tmp_path / "a.txt").write_text("caption")
    (tmp_path / ".hidden.png").write_bytes(b"")
    assert [p.name for p in list_image_files(tmp_path)] == ["a.jpg", "b.png"]


def test_prepared_images_captions_buckets_and_skips(tmp_path, kit):
    kit.write_images(tmp_path, 1, size=(128, 64), names=["00001-0-wide red car.png"])
    kit.write_images(tmp_path, 1, size=(64, 64), names=["square.png"], seed=1)
    (tmp_path / "square.txt").write_text("  a cat, sitting  \n", encoding="utf-8")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    results = list(iter_prepared_images(tmp_path, 128, 128, no_resize=False, with_alpha=False))
    prepared = {r.path.name: r for r in results if isinstance(r, PreparedImage)}
    skipped = [r for r in results if isinstance(r, SkippedImage)]
    assert [s.path.name for s in skipped] == ["broken.png"] and "readable" in skipped[0].reason
    assert prepared["00001-0-wide red car.png"].caption == "wide red car"  # file-name words
    assert prepared["square.png"].caption == "a cat, sitting"  # the sidecar wins
    wide = prepared["00001-0-wide red car.png"]
    assert wide.bucket[0] > wide.bucket[1] and wide.pixels.size == wide.bucket  # not squashed square
    assert prepared["square.png"].bucket == (128, 128)
    assert wide.alpha is None


def test_no_resize_keeps_native_size_with_a_centre_crop(tmp_path):
    pixels = np.zeros((70, 130, 3), dtype=np.uint8)
    pixels[:, 1:129] = 200  # a one-pixel black frame left and right is what the crop removes
    Image.fromarray(pixels).save(tmp_path / "odd.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "tiny.png")
    results = {r.path.name: r for r in iter_prepared_images(tmp_path, 512, 512, no_resize=True, with_alpha=False)}
    odd = results["odd.png"]
    assert odd.bucket == (128, 64)
    assert np.asarray(odd.pixels).min() == 200  # the image was cropped, not scaled
    assert isinstance(results["tiny.png"], SkippedImage) and "64 px" in results["tiny.png"].reason


def test_alpha_channel_is_read_when_asked(tmp_path, kit):
    kit.write_images(tmp_path, 1, mode="RGBA", names=["cut.png"])
    kit.write_images(tmp_path, 1, names=["plain.png"])
    results = {r.path.name: r for r in iter_prepared_images(tmp_path, 64, 64, no_resize=False, with_alpha=True)}
    assert results["cut.png"].alpha.mode == "L" and results["cut.png"].alpha.size == (64, 64)
    assert results["plain.png"].alpha is None


@pytest.mark.parametrize("image_size, bucket, no_resize, scaled, top_left", [
    ((1200, 800), (576, 384), False, (576, 384), (0, 0)),    # exact shape: scaled, no crop
    ((1000, 500), (640, 384), False, (768, 384), (0, 64)),   # wider: the sides are cut
    ((500, 1000), (384, 640), False, (384, 768), (64, 0)),   # taller: top and bottom
    ((701, 300), (640, 256), True, (701, 300), (22, 30)),    # no_resize: unscaled, centre cut (30.5 rounds to 30)
])
def test_crop_geometry_is_sdxls_crop_condition(image_size, bucket, no_resize, scaled, top_left):
    assert crop_geometry(image_size, bucket, no_resize) == (scaled, top_left)


def test_prepared_images_know_their_size_conditions(tmp_path):
    from ti.train.latents import size_conditions

    Image.new("RGB", (701, 300)).save(tmp_path / "wide.png")
    [item] = iter_prepared_images(tmp_path, 512, 512, no_resize=True, with_alpha=False)
    assert item.original_size == (701, 300) and item.bucket == (640, 256)
    assert size_conditions(item, flipped=False) == (300, 701, 22, 30, 256, 640)
    assert size_conditions(item, flipped=True) == (300, 701, 22, 31, 256, 640)  # the mirrored window starts at 31
