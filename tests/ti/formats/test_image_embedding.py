"""PNG/WEBP image embeddings: text chunk, pixel layer, A1111's fixture, and hostile images."""

from __future__ import annotations

import base64
import io
import json
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from ti.embedding import Embedding
from ti.errors import BadEmbeddingFile
from ti.formats import embed_into_image, load_embedding_file, save_embedding_file
from ti.formats.image_data_layer import (
    MAX_DECOMPRESSED_BYTES,
    embedding_json_bytes,
    extract_json_from_image,
    insert_data_layer,
    lcg_mask,
    parse_embedding_json,
)
from ti.formats.payload import a1111_dict


def _png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    output = io.BytesIO()
    image.save(output, "PNG", pnginfo=info)
    return output.getvalue()


def _embedding(rows: int = 3, width: int = 768, name: str = "pic") -> Embedding:
    return Embedding(name, torch.randn(rows, width, generator=torch.Generator().manual_seed(7)), step=12)


def test_lcg_starts_like_a1111():
    assert lcg_mask(4).tolist() == [253, 242, 127, 44]


def test_lcg_long_sequence_matches_the_plain_recurrence():
    state, expected = 0, []
    for _ in range(10_000):
        state = (1664525 * state + 1013904223) % 2**32
        expected.append(state % 255)
    assert lcg_mask(10_000).tolist() == expected


def test_real_fixture_decodes_through_both_layers(real_files_dir, tmp_path):
    fixture = real_files_dir / "test_embedding.png"
    from_text_chunk = load_embedding_file(fixture)

    pixels_only = tmp_path / "test_embedding.png"
    pixels_only.write_bytes(_png_bytes(Image.open(fixture).convert("RGB")))
    assert "sd-ti-embedding" not in Image.open(pixels_only).text
    from_pixels = load_embedding_file(pixels_only)

    assert torch.equal(from_pixels.vectors, from_text_chunk.vectors)
    assert (from_pixels.name, from_pixels.step) == (from_text_chunk.name, from_text_chunk.step) == ("rick", 60)


def test_our_encoder_reproduces_the_fixture_blocks(real_files_dir):
    """Same JSON, zlib, nibble split, ellipse style and LCG: the data pixels match A1111's exactly.

    Only the padding after the zlib stream differs: the fixture (written by an older A1111)
    zero-fills it where v1.10.1's np.resize repeats the data.
    """
    fixture = Image.open(real_files_dir / "test_embedding.png")
    data = parse_embedding_json(base64.b64decode(fixture.text["sd-ti-embedding"]))
    theirs = np.asarray(fixture.convert("RGB"))
    block_width = (theirs.shape[1] - 512 - 2) // 2
    picture = fixture.convert("RGB").crop((block_width + 1, 0, block_width + 1 + 512, 512))

    ours = np.asarray(embed_into_image(picture, data))

    assert ours.shape == theirs.shape
    data_length = len(zlib.compress(embedding_json_bytes(data), level=9))
    for columns in (slice(0, block_width), slice(-block_width, None)):
        assert np.array_equal(ours[:, columns].reshape(-1)[:data_length], theirs[:, columns].reshape(-1)[:data_length])


def test_png_carries_both_layers(tmp_path):
    path = save_embedding_file(_embedding(), tmp_path / "pic.png")
    image = Image.open(path)
    from_chunk = parse_embedding_json(base64.b64decode(image.text["sd-ti-embedding"]))
    from_pixels = parse_embedding_json(extract_json_from_image(image))
    assert torch.equal(from_chunk["string_to_param"]["*"], from_pixels["string_to_param"]["*"])
    assert from_chunk["string_to_token"] == {"*": 265} and from_chunk["step"] == 12


def test_wrapping_a_preview_with_black_edges_still_decodes():
    """A1111's reader crops black borders first; a preview with black rows must survive that."""
    preview = Image.new("RGBA", (96, 80), (0, 0, 0, 255))
    preview.paste((200, 30, 30, 255), (10, 10, 60, 50))
    data = a1111_dict(_embedding(rows=2))

    wrapped = embed_into_image(preview, data)

    assert wrapped.height == 80 and wrapped.width > 96 + 2
    assert torch.equal(parse_embedding_json(extract_json_from_image(wrapped))["string_to_param"]["*"].float(), data["string_to_param"]["*"])


def test_lossless_webp_round_trips_and_lossy_does_not(tmp_path):
    embedding = _embedding()
    path = save_embedding_file(embedding, tmp_path / "pic.webp")
    assert torch.equal(load_embedding_file(path).vectors, embedding.vectors)

    lossy = tmp_path / "lossy.webp"
    Image.open(path).save(lossy, "WEBP", quality=80)
    with pytest.raises(BadEmbeddingFile):
        load_embedding_file(lossy)


def test_zlib_bomb_in_pixel_layer_is_refused_fast(tmp_path):
    compressor = zlib.compressobj(9)
    megabyte = b"\0" * (1 << 20)
    bomb = b"".join(compressor.compress(megabyte) for _ in range(MAX_DECOMPRESSED_BYTES // len(megabyte) + 16)) + compressor.flush()
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(insert_data_layer(Image.new("RGB", (64, 64), (90, 90, 90)), bomb, np.array([128], dtype=np.uint8))))

    started = time.perf_counter()
    with pytest.raises(BadEmbeddingFile, match=f"refused: the pixel layer decompresses to more than {MAX_DECOMPRESSED_BYTES >> 20} MiB"):
        load_embedding_file(path)
    assert time.perf_counter() - started < 3


def test_corrupt_text_chunk_falls_back_to_the_pixels(tmp_path):
    good = Image.open(save_embedding_file(_embedding(), tmp_path / "pic.png")).convert("RGB")
    path = tmp_path / "mangled.png"
    path.write_bytes(_png_bytes(good, {"sd-ti-embedding": "bm90IGpzb24="}))  # base64 of "not json"
    assert torch.equal(load_embedding_file(path).vectors, _embedding().vectors)


# text chunk value -> words expected in the error, for images whose pixels carry nothing.
CORRUPT_TEXT_CHUNKS = {
    "not base64": ("%%%not base64%%%", "text chunk is corrupt"),
    "base64 of non-JSON": (base64.b64encode(b"{broken").decode(), "text chunk is corrupt"),
    "JSON list": (base64.b64encode(b"[1, 2]").decode(), "expected an object"),
    "ragged tensor": (base64.b64encode(json.dumps({"string_to_param": {"*": {"TORCHTENSOR": [[1.0], [1.0, 2.0]]}}}).encode()).decode(), "corrupt"),
    "deeply nested": (base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode(), "corrupt"),
    "no payload": (base64.b64encode(b'{"name": "x"}').decode(), "holds no embedding"),
}


@pytest.mark.parametrize("case", list(CORRUPT_TEXT_CHUNKS))
def test_corrupt_text_chunk_without_pixel_layer(tmp_path, case):
    value, expected = CORRUPT_TEXT_CHUNKS[case]
    path = tmp_path / "bad.png"
    path.write_bytes(_png_bytes(Image.new("RGB", (32, 32), (50, 60, 70)), {"sd-ti-embedding": value}))
    with pytest.raises(BadEmbeddingFile, match=expected):
        load_embedding_file(path)


def test_image_without_embedding(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(_png_bytes(Image.new("RGB", (64, 48), (120, 130, 140))))
    with pytest.raises(BadEmbeddingFile, match="no embedding data in this image"):
        load_embedding_file(path)


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_unreadable_image(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(BadEmbeddingFile, match="not a readable image"):
        load_embedding_file(path)


def test_truncated_png(tmp_path):
    full = save_embedding_file(_embedding(), tmp_path / "pic.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(BadEmbeddingFile):
        load_embedding_file(path)


@pytest.mark.parametrize("stored_name, expected", [("rick", "rick"), ("../../evil", "fallback"), ("", "fallback"), (None, "fallback")])
def test_image_name_rule(tmp_path, stored_name, expected):
    data = a1111_dict(_embedding(rows=1))
    data["name"] = stored_name
    path = tmp_path / "fallback.png"
    path.write_bytes(_png_bytes(Image.new("RGB", (8, 8), (9, 9, 9)), {"sd-ti-embedding": base64.b64encode(embedding_json_bytes(data)).decode()}))
    assert load_embedding_file(path).name == expected
