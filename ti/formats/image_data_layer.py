"""A1111's pixel data layer for image embeddings (a1111-compat.md §1, "Image embedding, pixel layer").

The embedding's JSON is zlib-compressed and its bytes split into nibbles; the low nibbles fill
a block left of the picture and the high nibbles a block right of it, each pixel channel
carrying one nibble in its low 4 bits. The high 4 bits only decorate (grey ellipses), and
every nibble is XORed with an LCG mask so the blocks look like noise. Black columns separate
the blocks from the picture, which is how the reader finds them.

This module works on JSON bytes and PIL images only; png_embed.py does files and text chunks.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

CHANNELS = 3
STYLE_LENGTH = 1024
# Embedding JSON is ~4 MB at most (75 vectors x 2048 floats, ~25 characters each); more is a
# zlib bomb. The cap also bounds the JSON parse: 64 MiB of "0," took ~4 s and ~1 GB to refuse.
MAX_DECOMPRESSED_BYTES = 16 << 20
_LCG_MULTIPLIER, _LCG_INCREMENT, _LCG_MODULUS = 1664525, 1013904223, 1 << 32
_LCG_CHUNK = 4096


class EmbeddingJSONEncoder(json.JSONEncoder):
    """Tensors as {"TORCHTENSOR": nested list}, as A1111 writes them."""

    def default(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return {"TORCHTENSOR": obj.detach().cpu().numpy().tolist()}
        return super().default(obj)


def embedding_json_bytes(data: dict) -> bytes:
    """The JSON A1111 stores (text chunk and pixel layer) for a .pt-style dict."""
    return json.dumps(data, cls=EmbeddingJSONEncoder).encode("utf-8")


def _decode_tensor_objects(obj: dict) -> Any:
    if "TORCHTENSOR" in obj:
        return torch.from_numpy(np.array(obj["TORCHTENSOR"], dtype=np.float64))
    return obj


def parse_embedding_json(text: bytes | str) -> Any:
    """JSON (from either image layer) -> the .pt-style dict, TORCHTENSOR objects as float64 tensors.

    Raises:
        ValueError: not JSON, or a TORCHTENSOR that is not a rectangular array of numbers.
        RecursionError: absurdly nested JSON.
    """
    return json.loads(text, object_hook=_decode_tensor_objects)


def lcg_mask(count: int) -> np.ndarray:
    """The first `count` outputs of A1111's LCG (state0 = 0), each `state mod 255`, as uint8.

    Computed a chunk at a time: the chunk after `prev` is a*prev + c with (a, c) the LCG map
    composed _LCG_CHUNK times, so long masks cost numpy work, not a Python loop per pixel.
    """
    first = np.empty(min(count, _LCG_CHUNK), dtype=np.uint64)
    state, jump_a, jump_c = 0, 1, 0
    for index in range(first.shape[0]):
        state = (_LCG_MULTIPLIER * state + _LCG_INCREMENT) % _LCG_MODULUS
        first[index] = state
        jump_a, jump_c = (_LCG_MULTIPLIER * jump_a) % _LCG_MODULUS, (_LCG_MULTIPLIER * jump_c + _LCG_INCREMENT) % _LCG_MODULUS
    chunks, previous = [first], first
    produced = first.shape[0]
    # Products stay below 2**64: both factors are < 2**32.
    while produced < count:
        previous = (np.uint64(jump_a) * previous + np.uint64(jump_c)) & np.uint64(_LCG_MODULUS - 1)
        chunks.append(previous)
        produced += previous.shape[0]
    states = np.concatenate(chunks)[:count]
    return (states % np.uint64(255)).astype(np.uint8)


def _xor_with_lcg(block: np.ndarray) -> np.ndarray:
    """XOR each element (C order) with the low nibble of a fresh LCG: the same call undoes it."""
    mask = lcg_mask(block.size).reshape(block.shape) & 0x0F
    return np.bitwise_xor(block.astype(np.uint8), mask)


def _first_vector(data: dict) -> np.ndarray | None:
    """Row 0 of the embedding in `data` (SDXL: clip_l's row 0 then clip_g's), or None."""
    if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        rows = [next(iter(data["string_to_param"].values()))]
    elif "clip_l" in data and "clip_g" in data:
        rows = [data["clip_l"], data["clip_g"]]
    else:
        return None
    parts = []
    for tensor in rows:
        array = np.asarray(torch.as_tensor(tensor).detach().cpu(), dtype=np.float64)
        parts.append(array[0] if array.ndim == 2 else array.reshape(-1))
    return np.concatenate(parts)


def _style_values(data: dict) -> np.ndarray:
    """A1111's decoration shades: |first vector| scaled to 0..255, at most 1024 values."""
    first = _first_vector(data)
    values = np.abs(first[:STYLE_LENGTH]) if first is not None and first.size else np.zeros(1)
    peak = values.max()
    if not np.isfinite(peak) or peak == 0:  # all-zero (or broken) vectors would divide by zero
        return np.zeros(values.size, dtype=np.uint8)
    return (np.nan_to_num(values / peak) * 255).astype(np.uint8)


def _style_block(block: np.ndarray, shades: np.ndarray) -> np.ndarray:
    """XOR the high nibbles with grey ellipses drawn in A1111's order (decoration only)."""
    height, width = block.shape[0], block.shape[1]
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    index = 0
    for x in range(-6, width, 8):
        for row_index, y in enumerate(range(-6, height, 8)):
            offset = 4 if row_index % 2 == 0 else 0
            shade = int(shades[index % len(shades)])
            index += 1
            draw.ellipse((x + offset, y, x + 6 + offset, y + 6), fill=(shade, shade, shade))
    return block ^ (np.asarray(canvas, dtype=np.uint8) & 0xF0)


def _nibble_blocks(compressed: bytes, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) nibble blocks of shape (height, width, 3), padded cyclically like np.resize."""
    raw = np.frombuffer(compressed, dtype=np.uint8)
    size = raw.shape[0] + (height - raw.shape[0] % height)  # A1111 always adds a full unit
    size += height * CHANNELS - size % (height * CHANNELS)
    low = np.resize(raw & 0x0F, size).reshape((height, -1, CHANNELS))
    high = np.resize(raw >> 4, size).reshape((height, -1, CHANNELS))
    return low, high


def insert_data_layer(image: Image.Image, compressed: bytes, shades: np.ndarray) -> Image.Image:
    """lo block | black | image | black | hi block, from already-compressed bytes.

    Args:
        image: the picture in the middle (converted to RGB).
        compressed: zlib bytes to carry.
        shades: decoration values (uint8), see _style_values.
    Returns:
        a new RGB image, wider than `image`.
    """
    picture = image.convert("RGB")
    low, high = _nibble_blocks(compressed, picture.height)
    low = _xor_with_lcg(_style_block(low, shades))
    high = _xor_with_lcg(_style_block(high, shades[::-1]))
    block_width = low.shape[1]
    result = Image.new("RGB", (picture.width + 2 * block_width + 2, picture.height), (0, 0, 0))
    result.paste(Image.fromarray(low, mode="RGB"), (0, 0))
    result.paste(picture, (block_width + 1, 0))
    result.paste(Image.fromarray(high, mode="RGB"), (block_width + 1 + picture.width + 1, 0))
    return result


def embed_into_image(image: Image.Image, data: dict) -> Image.Image:
    """Wrap `image` in A1111's pixel data layer carrying `data` (a .pt-style dict with tensors).

    Pure-black pixels of the picture are lifted to (1, 1, 1): A1111's reader first crops away
    black borders, and a black top row or edge column in the picture would shift the blocks.

    Raises:
        ValueError: the picture is too small to carry the layer readably (checked by decoding).
    """
    picture = np.maximum(np.asarray(image.convert("RGB"), dtype=np.uint8), 1)
    compressed = zlib.compress(embedding_json_bytes(data), level=9)
    result = insert_data_layer(Image.fromarray(picture, mode="RGB"), compressed, _style_values(data))
    if extract_json_from_image(result) != zlib.decompress(compressed):
        raise ValueError(f"a {image.width}x{image.height} picture is too small to carry the embedding's pixel layer")
    return result


def _crop_black(pixels: np.ndarray) -> np.ndarray:
    """Crop to the bounding box of pixels whose three channels are all > 0."""
    mask = (pixels > 0).all(axis=2)
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if columns.size == 0:
        return pixels[:0, :0]
    return pixels[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


class DataLayerTooLarge(ValueError):
    """The pixel layer decompresses past MAX_DECOMPRESSED_BYTES (a zlib bomb)."""


def extract_json_from_image(image: Image.Image, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> bytes | None:
    """The JSON bytes carried by the pixel layer, or None when the image carries none.

    Raises:
        DataLayerTooLarge: the data would decompress past max_bytes; decompression stops there.
    """
    nibbles = _crop_black(np.asarray(image.convert("RGB"), dtype=np.uint8)) & 0x0F
    black_columns = np.flatnonzero(nibbles.sum(axis=(0, 2)) == 0)
    if black_columns.size < 2:
        return None
    low = nibbles[:, : black_columns[0], :]
    high = nibbles[:, black_columns[-1] + 1 :, :]
    if low.size == 0 or low.shape != high.shape:
        return None
    combined = (_xor_with_lcg(high) << 4) | _xor_with_lcg(low)
    decompressor = zlib.decompressobj()
    try:
        result = decompressor.decompress(combined.tobytes(), max_bytes + 1)
    except zlib.error:
        return None
    if len(result) > max_bytes:
        raise DataLayerTooLarge(f"the pixel layer decompresses to more than {max_bytes >> 20} MiB")
    if not decompressor.eof:
        return None  # a truncated stream: not A1111's layer
    return result
