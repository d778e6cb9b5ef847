"""Pure image operations of preprocessing: flip, split oversized pictures, cover crop, auto-sized crop.

Each takes a PIL image and sizes and returns new images; none reads or writes files. Resizing is
LANCZOS everywhere (A1111 used Pillow's default filter for splits and focal crops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageOps

AUTO_CROP_STEP = 64  # candidate sizes of the auto-sized crop: multiples of 64, as in A1111
AUTO_CROP_OBJECTIVES = ("max-area", "min-error")


def flip(image: Image.Image) -> Image.Image:
    """Mirror left-right (A1111's `ImageOps.mirror`)."""
    return ImageOps.mirror(image)


def cover_crop_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, keep the centre, resize with LANCZOS.

    The crop box is fractional and handed to `resize`, so no pixel is lost to rounding twice.

    Args:
        image: the source image.
        width, height: the output size.

    Returns:
        A width x height image.
    """
    source_width, source_height = image.size
    if source_height / height < source_width / width:
        kept_width = width * source_height / height
        box = ((source_width - kept_width) / 2, 0, (source_width + kept_width) / 2, source_height)
    else:
        kept_height = height * source_width / width
        box = (0, (source_height - kept_height) / 2, source_width, (source_height + kept_height) / 2)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


# ---------------------------------------------------------------------------------------------
# Split oversized pictures


@dataclass(frozen=True)
class SplitPlan:
    """How an oversized picture is cut: along which axis and how much thinner than the target it is.

    ratio: the picture's aspect relative to the target's, on the split axis, in (0, 1]; a strip
        whose ratio is 0.25 is four times longer (relative to the target) than the target.
    vertical: True cuts along the height (a tall strip), False along the width.
    """

    ratio: float
    vertical: bool


def plan_split(image_size: tuple[int, int], width: int, height: int) -> SplitPlan:
    """Say how much longer a picture is than the target, and along which axis.

    A1111 picks the axis from the picture alone (portrait -> vertical), so a portrait picture
    wider in shape than a tall target could never be split; we compare the two aspect ratios.
    When A1111 would split, the ratio is the same as its formula: (w*H)/(h*W) for vertical.
    """
    image_width, image_height = image_size
    relative_tallness = (image_height * width) / (image_width * height)
    if relative_tallness >= 1:
        return SplitPlan(ratio=1 / relative_tallness, vertical=True)
    return SplitPlan(ratio=relative_tallness, vertical=False)


def split_tile_offsets(long_side: int, tile_side: int, overlap: float) -> list[int]:
    """Where the tiles of a split start along the long side (A1111's formula).

    count = ceil((L - T*overlap) / (T*(1 - overlap))); tile i starts at int(i*(L - T)/(count - 1)).

    Args:
        long_side: L, the length of the resized picture along the split axis.
        tile_side: T, the target's length along that axis.
        overlap: the wanted overlap between neighbours, as a fraction of T (0 to 0.9).

    Returns:
        The start of each tile; always starts at 0 and ends at L - T. One tile when L <= T
        (A1111 divided by zero there).
    """
    if long_side <= tile_side:
        return [0]
    count = math.ceil((long_side - tile_side * overlap) / (tile_side * (1.0 - overlap)))
    count = max(count, 2)  # L > T needs two tiles to cover it
    step = (long_side - tile_side) / (count - 1)
    return [int(step * i) for i in range(count)]


def split_oversized(image: Image.Image, width: int, height: int, overlap: float) -> list[Image.Image]:
    """Cut a long picture into overlapping width x height tiles.

    The picture is resized so its short side (relative to the target) equals the target's, then
    tiles are cut along the long axis at `split_tile_offsets`.

    Args:
        image: the source image.
        width, height: the tile size.
        overlap: fraction of a tile shared with its neighbour (0 to 0.9).

    Returns:
        The tiles, in order from top (or left).
    """
    plan = plan_split(image.size, width, height)
    if plan.vertical:
        resized_height = max(height, image.height * width // image.width)
        resized = image.resize((width, resized_height), Image.Resampling.LANCZOS)
        offsets = split_tile_offsets(resized_height, height, overlap)
        return [resized.crop((0, top, width, top + height)) for top in offsets]
    resized_width = max(width, image.width * height // image.height)
    resized = image.resize((resized_width, height), Image.Resampling.LANCZOS)
    offsets = split_tile_offsets(resized_width, width, overlap)
    return [resized.crop((left, 0, left + width, height)) for left in offsets]


# ---------------------------------------------------------------------------------------------
# Auto-sized crop


def aspect_error(image_size: tuple[int, int], width: int, height: int) -> float:
    """How far a size's aspect is from the picture's: 1 - min(a, 1/a), a = (iw/ih)/(w/h). 0 is exact."""
    image_width, image_height = image_size
    relative = (image_width / image_height) / (width / height)
    return 1 - min(relative, 1 / relative)


def choose_auto_crop_size(
    image_size: tuple[int, int],
    min_size: int = 384,
    max_size: int = 768,
    min_area: int = 64 * 64,
    max_area: int = 640 * 640,
    objective: str = "max-area",
    error_threshold: float = 0.1,
) -> tuple[int, int] | None:
    """Pick the output size of the auto-sized crop (A1111's "multicrop").

    Candidates are every width and height from min_size to max_size in steps of 64 whose area is
    within [min_area, max_area] and whose aspect error is at most error_threshold. "max-area"
    takes the largest area, then the smallest error; "min-error" the smallest error, then the
    largest area. Ties go to the smaller width, then the smaller height (A1111's order).

    Returns:
        (width, height), or None when no candidate fits.
    """
    best_size, best_key = None, None
    for width in range(min_size, max_size + 1, AUTO_CROP_STEP):
        for height in range(min_size, max_size + 1, AUTO_CROP_STEP):
            if not min_area <= width * height <= max_area:
                continue
            error = aspect_error(image_size, width, height)
            if error > error_threshold:
                continue
            key = (width * height, -error) if objective == "max-area" else (-error, width * height)
            if best_key is None or key > best_key:
                best_size, best_key = (width, height), key
    return best_size


def auto_size_crop(image: Image.Image, **size_options) -> Image.Image | None:
    """Centre-crop and resize a picture to the size `choose_auto_crop_size` picks.

    Args:
        image: the source image.
        **size_options: min_size, max_size, min_area, max_area, objective, error_threshold.

    Returns:
        The cropped image, or None when no size fits within the error threshold.
    """
    size = choose_auto_crop_size(image.size, **size_options)
    if size is None:
        return None
    return cover_crop_resize(image, *size)
