"""Image embeddings (.png, .webp): A1111's `sd-ti-embedding` text chunk plus the pixel data layer.

Reading checks the text chunk first, then the pixel layer (a1111-compat.md §1); a corrupt text
chunk falls back to the pixels, so an image whose metadata was mangled still loads. WEBP has no
text chunk here: it carries the pixel layer only, and only lossless WEBP keeps it intact.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from ti.embedding import Embedding
from ti.errors import BadEmbeddingFile
from ti.formats.image_data_layer import (
    MAX_DECOMPRESSED_BYTES,
    DataLayerTooLarge,
    embed_into_image,
    embedding_json_bytes,
    extract_json_from_image,
    parse_embedding_json,
)
from ti.formats.payload import a1111_dict, embedding_from_payload

TEXT_CHUNK_KEY = "sd-ti-embedding"
DEFAULT_CANVAS_SIZE = (512, 512)
IMAGE_FORMATS = {".png": "png", ".webp": "webp"}
# Refuse pictures beyond this many pixels before decoding them (PIL's own bomb check is a warning
# up to twice its limit); an image embedding is a preview of a few hundred pixels a side.
MAX_IMAGE_PIXELS = 64_000_000
# base64 of the JSON the pixel layer may hold (MAX_DECOMPRESSED_BYTES): the same bound on both layers.
MAX_TEXT_CHUNK_CHARS = MAX_DECOMPRESSED_BYTES * 4 // 3 + 4

__all__ = ["embed_into_image", "image_embedding_bytes", "read_image_embedding", "default_canvas"]


def default_canvas(embedding: Embedding, size: tuple[int, int] = DEFAULT_CANVAS_SIZE) -> Image.Image:
    """A plain picture for an embedding without a preview: a dark gradient, `<name>`, and `{n}v {step}s`.

    No pixel is pure black, so the data layer's black separator columns stay unambiguous.
    """
    width, height = size
    canvas = Image.new("RGB", size, (40, 44, 52))
    draw = ImageDraw.Draw(canvas)
    for y in range(height):  # a vertical gradient, so the preview is not a flat block
        shade = 40 + (y * 40) // max(height - 1, 1)
        draw.line([(0, y), (width, y)], fill=(shade, shade + 4, shade + 12))
    draw.text((16, 16), f"<{embedding.name}>", fill=(235, 235, 240), font=_default_font(max(height // 14, 10)))
    footer = f"{embedding.num_vectors}v {embedding.step if embedding.step is not None else 0}s"
    if embedding.checkpoint_hash:
        footer = f"[{embedding.checkpoint_hash}]  {footer}"
    footer_size = max(height // 28, 10)
    draw.text((16, height - footer_size - 16), footer, fill=(200, 200, 210), font=_default_font(footer_size))
    return canvas


def _default_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at `size` pixels; its small bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow < 10.1 or built without FreeType
        return ImageFont.load_default()


def image_embedding_bytes(embedding: Embedding, suffix: str, base_image: Image.Image | None = None) -> bytes:
    """The bytes of a .png (text chunk + pixel layer) or lossless .webp (pixel layer) embedding.

    Args:
        embedding: what to store; its name goes into the data (readers use it as the name).
        suffix: ".png" or ".webp".
        base_image: the picture to wrap (e.g. a training preview); default_canvas when None.
    Returns:
        the encoded image file.
    """
    data = a1111_dict(embedding)
    picture = embed_into_image(base_image if base_image is not None else default_canvas(embedding), data)
    output = io.BytesIO()
    if suffix.lower() == ".webp":
        picture.save(output, "WEBP", lossless=True, quality=100, exact=True)
    else:
        info = PngImagePlugin.PngInfo()
        info.add_text(TEXT_CHUNK_KEY, base64.b64encode(embedding_json_bytes(data)).decode("ascii"))
        picture.save(output, "PNG", pnginfo=info)
    return output.getvalue()


def _open_image(data: bytes, path: Path) -> Image.Image:
    """Open and fully decode an image, turning every decoder failure into BadEmbeddingFile."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise BadEmbeddingFile(path, f"is a {image.width}x{image.height} image, too large for an image embedding")
            image.load()
    except BadEmbeddingFile:
        raise
    except Image.UnidentifiedImageError:  # its message names a BytesIO object, not the file
        raise BadEmbeddingFile(path, "is not a readable image (no PNG/WEBP data, or cut short)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL reports broken files as OSError (UnidentifiedImageError, truncated), SyntaxError
        # (broken PNG chunks) or ValueError (oversized text chunks).
        raise BadEmbeddingFile(path, f"is not a readable image ({str(exc)[:200] or type(exc).__name__})") from None
    return image


def _data_from_text_chunk(text: str, path: Path) -> dict:
    """Decode the base64 JSON of an sd-ti-embedding chunk. Raises BadEmbeddingFile."""
    if len(text) > MAX_TEXT_CHUNK_CHARS:  # checked before decoding: parsing is the slow part
        raise BadEmbeddingFile(path, f"its {TEXT_CHUNK_KEY} text chunk holds {len(text) * 3 // 4 >> 20} MiB, more than "
                                     f"an embedding needs (at most {MAX_DECOMPRESSED_BYTES >> 20} MiB)")
    try:
        decoded = parse_embedding_json(base64.b64decode(text))
    except (binascii.Error, ValueError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise BadEmbeddingFile(path, f"its {TEXT_CHUNK_KEY} text chunk is corrupt ({str(exc)[:120]})") from None
    if not isinstance(decoded, dict):
        raise BadEmbeddingFile(path, f"its {TEXT_CHUNK_KEY} text chunk holds a {type(decoded).__name__}, expected an object")
    return decoded


def _data_from_pixels(image: Image.Image, path: Path) -> dict | None:
    """Decode the pixel layer; None when the image carries none. Raises BadEmbeddingFile."""
    try:
        json_bytes = extract_json_from_image(image)
    except DataLayerTooLarge as exc:
        raise BadEmbeddingFile(path, f"refused: {exc} (a zlib bomb?)") from None
    if json_bytes is None:
        return None
    try:
        decoded = parse_embedding_json(json_bytes)
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise BadEmbeddingFile(path, f"its pixel data layer is corrupt ({str(exc)[:120]})") from None
    return decoded if isinstance(decoded, dict) else None


def _usable_stored_name(value: object) -> str | None:
    """The stored name if it is a plain name; None for missing, empty or path-like values.

    Names end up in file names (training saves `<name>.pt`), so a name carrying a path
    ("../x") from a downloaded image is not trusted; the file stem is used instead.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    name = value.strip()
    if any(char in name for char in "/\\\0") or name in (".", ".."):
        return None
    if any("\ud800" <= char <= "\udfff" for char in name):  # lone surrogates from JSON escapes: not text
        return None
    return name


def read_image_embedding(data: bytes, path: Path) -> Embedding:
    """An embedding from a .png/.webp file's bytes: text chunk first, then the pixel layer.

    The name is the stored `name`, falling back to the file stem (A1111's rule for images).

    Raises:
        BadEmbeddingFile: not an image, no embedding in it ("no embedding data in this image"),
        corrupt data, or a zlib bomb in the pixel layer.
    """
    image = _open_image(data, path)
    text_chunks = getattr(image, "text", None) or {}
    decoded, text_problem = None, None
    if TEXT_CHUNK_KEY in text_chunks:
        try:
            decoded = _data_from_text_chunk(text_chunks[TEXT_CHUNK_KEY], path)
        except BadEmbeddingFile as exc:
            text_problem = exc.reason  # try the pixels before giving up
    if decoded is None:
        decoded = _data_from_pixels(image, path)
    if decoded is None:
        raise BadEmbeddingFile(path, f"{text_problem} and the pixels carry no embedding" if text_problem else "no embedding data in this image")
    name = _usable_stored_name(decoded.get("name")) or path.stem
    file_format = IMAGE_FORMATS.get(path.suffix.lower(), "png")
    return embedding_from_payload(decoded, path, name=name, file_format=file_format)
