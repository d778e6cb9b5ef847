"""Training images: listing, reading (with alpha), captions, and aspect buckets.

A1111 squashes every image to width × height. We keep the aspect ratio instead: each image goes
to the bucket (sides multiples of 64, area at most width × height) that best keeps its shape
without giving up much resolution (choose_bucket), is scaled to cover it and centre-cropped. With `no_resize` an image keeps its own size,
rounded down to multiples of 64 (a centre crop of at most 63 pixels a side).

Bucket sides are multiples of 64 because SD's VAE divides by 8 and its UNet by 8 more: any
other size is padded or cropped somewhere inside the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageOps

from ti.captions import read_caption
from ti.errors import TIError
from ti.image_loading import load_image_for_training

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BUCKET_STEP = 64
MAX_BUCKET_ASPECT = 4.0  # no bucket is longer than 4:1; more extreme images are cropped
# How much a lost share of resolution weighs against a mismatch in shape (see choose_bucket).
AREA_LOSS_WEIGHT = 0.5

Bucket = tuple[int, int]  # (width, height) in pixels


@dataclass
class SkippedImage:
    """An image file that was not used, and why."""

    path: Path
    reason: str


@dataclass
class PreparedImage:
    """One training image, fitted to its bucket."""

    path: Path
    caption: str
    pixels: Image.Image  # RGB, exactly bucket-sized
    alpha: Image.Image | None  # "L", bucket-sized; None when the file has no alpha channel
    # SDXL's size conditions: the file's (upright) size, the size it was scaled to so as to cover
    # the bucket (the same with no_resize), and where the bucket was cut from that, (top, left).
    original_size: tuple[int, int] = (0, 0)  # (width, height)
    scaled_size: tuple[int, int] = (0, 0)  # (width, height)
    crop_top_left: tuple[int, int] = (0, 0)

    @property
    def bucket(self) -> Bucket:
        return self.pixels.size


def list_image_files(data_dir: Path) -> list[Path]:
    """Image files directly inside data_dir (not subfolders), sorted by name.

    Sorting makes the run independent of the file system's listing order; hidden files
    (".DS_Store", editors' temp files) are left out.
    """
    files = [p for p in Path(data_dir).iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.name)


def candidate_buckets(width: int, height: int) -> list[Bucket]:
    """Every bucket shape for a target size: sides multiples of 64, area at most width × height,
    no more elongated than MAX_BUCKET_ASPECT."""
    area = width * height
    buckets = []
    max_side = int(math.sqrt(area * MAX_BUCKET_ASPECT)) // BUCKET_STEP * BUCKET_STEP
    for bucket_width in range(BUCKET_STEP, max(max_side, BUCKET_STEP) + 1, BUCKET_STEP):
        tallest = area // bucket_width // BUCKET_STEP * BUCKET_STEP
        for bucket_height in range(BUCKET_STEP, tallest + 1, BUCKET_STEP):
            if 1 / MAX_BUCKET_ASPECT <= bucket_width / bucket_height <= MAX_BUCKET_ASPECT:
                buckets.append((bucket_width, bucket_height))
    return buckets or [(BUCKET_STEP, BUCKET_STEP)]  # only below 64 × 64, which TrainConfig refuses


def choose_bucket(image_size: tuple[int, int], buckets: list[Bucket]) -> Bucket:
    """The bucket that best keeps both the image's shape and the target's resolution.

    Cost = |log(bucket aspect / image aspect)| + AREA_LOSS_WEIGHT × (share of the largest
    bucket's area given up). So a 3:2 image at 512² gets an exact 576×384 rather than a cropped
    640×384, and a 4:3 one 576×448 (4% off its shape) rather than an exact but small 512×384.
    Ties go to the larger area, then the wider bucket, so the choice never depends on order.
    """
    image_width, image_height = image_size
    image_log_aspect = math.log(image_width / image_height)
    largest_area = max(w * h for w, h in buckets)

    def cost(bucket: Bucket) -> tuple[float, int, int]:
        shape_error = abs(math.log(bucket[0] / bucket[1]) - image_log_aspect)
        area_loss = 1 - bucket[0] * bucket[1] / largest_area
        return (round(shape_error + AREA_LOSS_WEIGHT * area_loss, 9), -bucket[0] * bucket[1], -bucket[0])

    return min(buckets, key=cost)


def native_bucket(image_size: tuple[int, int]) -> Bucket | None:
    """no_resize: the image's own size rounded down to multiples of 64 (None below 64 px)."""
    width = image_size[0] // BUCKET_STEP * BUCKET_STEP
    height = image_size[1] // BUCKET_STEP * BUCKET_STEP
    return (width, height) if width and height else None


def fit_to_bucket(image: Image.Image, bucket: Bucket) -> Image.Image:
    """Scale to cover the bucket (aspect kept), then crop the centre to exactly the bucket."""
    if image.size == bucket:
        return image
    return ImageOps.fit(image, bucket, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def crop_geometry(image_size: tuple[int, int], bucket: Bucket, no_resize: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """((scaled width, scaled height), (top, left)): the picture scaled to cover the bucket as
    fit_to_bucket does (unscaled with no_resize, as crop_centre), and where the bucket's centre
    cut starts in it. SDXL's crop condition is that (top, left), in the scaled picture's pixels,
    as diffusers' SDXL training script measures it."""
    width, height = image_size
    if not no_resize:
        scale = max(bucket[0] / width, bucket[1] / height)
        width, height = max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale))
    return (width, height), (int(round((height - bucket[1]) / 2)), int(round((width - bucket[0]) / 2)))


def crop_centre(image: Image.Image, bucket: Bucket) -> Image.Image:
    """no_resize: cut the bucket out of the middle of the image, pixels untouched."""
    left = (image.width - bucket[0]) // 2
    top = (image.height - bucket[1]) // 2
    return image.crop((left, top, left + bucket[0], top + bucket[1]))


def read_alpha(path: Path) -> Image.Image | None:
    """The alpha channel (mode "L", upright) of an image file, or None when it has none."""
    with Image.open(path) as opened:
        opened.load()
        upright = ImageOps.exif_transpose(opened)
        has_alpha = "A" in upright.getbands() or "transparency" in upright.info
        if not has_alpha:
            return None
        return upright.convert("RGBA").getchannel("A")


def iter_prepared_images(
    data_dir: Path,
    width: int,
    height: int,
    no_resize: bool,
    with_alpha: bool,
    filewords_regex: str = "",
    filewords_join: str = " ",
) -> Iterator[PreparedImage | SkippedImage]:
    """Each image of data_dir, fitted to its bucket, or the reason it was skipped.

    Images are read one at a time, so the caller can encode and drop them: a large dataset is
    never all in memory at once.
    """
    buckets = candidate_buckets(width, height)
    for path in list_image_files(data_dir):
        try:
            rgb = load_image_for_training(path)
            alpha = read_alpha(path) if with_alpha else None
            caption = read_caption(path, filewords_regex, filewords_join)
        except TIError as error:
            yield SkippedImage(path, str(error).removeprefix(f"{path}: "))
            continue
        except (OSError, ValueError, SyntaxError, EOFError) as error:  # PIL's ways to say "damaged"
            yield SkippedImage(path, f"not a readable picture ({error})")
            continue
        bucket = native_bucket(rgb.size) if no_resize else choose_bucket(rgb.size, buckets)
        if bucket is None:
            yield SkippedImage(path, f"is {rgb.width}x{rgb.height}; with no_resize, both sides must be 64 px or more")
            continue
        fit = crop_centre if no_resize else fit_to_bucket
        fitted_alpha = fit(alpha, bucket) if alpha is not None else None
        scaled_size, crop_top_left = crop_geometry(rgb.size, bucket, no_resize)
        yield PreparedImage(path=path, caption=caption, pixels=fit(rgb, bucket), alpha=fitted_alpha,
                            original_size=rgb.size, scaled_size=scaled_size, crop_top_left=crop_top_left)
