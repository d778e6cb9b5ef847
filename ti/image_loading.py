"""Open any picture a user drops in a training folder and return it upright, 8-bit RGB.

Why not just `Image.open(path).convert("RGB")` (what A1111 does):
- EXIF orientation is ignored by `convert`, so phone photos come out lying on their side.
- 16-bit greyscale ('I;16', 'I') is clipped, not scaled: every value above 255 turns white.
- Transparent pixels keep whatever colour they hide (often black or garbage); we composite
  them on white, the usual backdrop of cut-out art and sprites.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ti.errors import TIError

# Transparent areas become this colour. White: the backdrop such art is drawn and shown on.
TRANSPARENT_BACKGROUND = (255, 255, 255)

# What Pillow raises for a file that is not a picture, is cut short, or is a decompression bomb.
# (SyntaxError and EOFError are raised by a few of its older decoders on damaged data.)
_UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def load_image_for_training(path: str | Path) -> Image.Image:
    """Read a picture file as an upright 8-bit RGB image.

    Args:
        path: the picture file (any format Pillow reads; the first frame of an animation).

    Returns:
        A loaded RGB image, EXIF orientation applied, transparency composited on white,
        16-bit and float greyscale scaled (not clipped) to 8 bits.

    Raises:
        TIError: the file cannot be read as a picture; the message names the file and why.
    """
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now, inside the try: truncated files fail here, not later
            upright = ImageOps.exif_transpose(opened)
            return to_rgb(upright)
    except _UNREADABLE_ERRORS as exc:
        raise TIError(f"{path}: not a readable picture ({exc})") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB.

    Args:
        image: a loaded image.

    Returns:
        A new RGB image (or the same one when it already is RGB).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_greyscale_to_8bit(image), mode="L").convert("RGB")
    if mode == "P":
        # A palette may carry transparency (tRNS / GIF transparent index); RGBA keeps it.
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    elif mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGB", image.size, TRANSPARENT_BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _greyscale_to_8bit(image: Image.Image) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float greyscale image to uint8 values.

    16-bit modes use the full 0..65535 range. Mode 'I' (32-bit, how some readers return 16-bit
    PNGs and TIFFs) is taken as 16-bit when its values exceed 255, else as 8-bit. Mode 'F' is
    taken as 0..1 when its values fit there, else as 0..255.
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        scale = 65535.0
    elif image.mode == "F":
        scale = 1.0 if values.size and values.max() <= 1.0 else 255.0
    else:
        scale = 65535.0 if values.size and values.max() > 255 else 255.0
    return np.clip(np.rint(values * (255.0 / scale)), 0, 255).astype(np.uint8)
