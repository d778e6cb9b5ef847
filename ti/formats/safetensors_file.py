"""`.safetensors` embeddings: `{"emb_params": [n, dim]}` (kohya, A1111) or SDXL `clip_l`/`clip_g`.

Never unpickles. The header is checked here before the safetensors library sees the bytes, so a
lying header (offsets past the end, sizes that do not match the shape, a header longer than
the file) is one clear BadEmbeddingFile instead of a library panic.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import safetensors
import safetensors.torch

from ti.embedding import Embedding
from ti.errors import BadEmbeddingFile
from ti.formats.payload import a1111_metadata, embedding_from_payload, embedding_tensors

# Embedding headers are a few hundred bytes; 100 MB is the safetensors library's own cap.
MAX_HEADER_BYTES = 100_000_000
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
METADATA_KEY = "__metadata__"


def parse_safetensors_header(data: bytes, path: Path) -> tuple[dict, dict[str, str]]:
    """Validate a safetensors header against the file's length.

    Args:
        data: the whole file.
        path: the file, for messages.
    Returns:
        (tensor entries by name, the __metadata__ dict or {}).
    Raises:
        BadEmbeddingFile: the header is missing, truncated, not JSON, or lies about the data.
    """
    if len(data) < 8:
        raise BadEmbeddingFile(path, f"is {len(data)} bytes, too short for a safetensors file")
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length > MAX_HEADER_BYTES or 8 + header_length > len(data):
        raise BadEmbeddingFile(path, f"is not a valid safetensors file (its header claims {header_length} bytes; the file has {len(data)}); truncated?")
    try:
        header = json.loads(data[8 : 8 + header_length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadEmbeddingFile(path, "is not a valid safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise BadEmbeddingFile(path, "is not a valid safetensors file (its header is not a JSON object)")
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict):
        raise BadEmbeddingFile(path, "has a malformed __metadata__ (not a JSON object)")
    data_length = len(data) - 8 - header_length
    for name, entry in header.items():
        _check_tensor_entry(name, entry, data_length, path)
    return header, {str(key): str(value) for key, value in metadata.items()}


def _check_tensor_entry(name: str, entry: object, data_length: int, path: Path) -> None:
    """One header entry: a known dtype, a shape, and offsets that match both and fit the file."""
    where = f"tensor {name[:40]!r}"
    if not isinstance(entry, dict):
        raise BadEmbeddingFile(path, f"safetensors header: {where} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise BadEmbeddingFile(path, f"safetensors header: {where} has unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
        raise BadEmbeddingFile(path, f"safetensors header: {where} has a malformed shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(value, int) for value in offsets)):
        raise BadEmbeddingFile(path, f"safetensors header: {where} has malformed data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= data_length:
        raise BadEmbeddingFile(path, f"safetensors header: {where} points past the end of the file (bytes {begin}..{end} of {data_length}); truncated?")
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise BadEmbeddingFile(path, f"safetensors header: {where} is {end - begin} bytes but its shape {shape} needs {math.prod(shape) * DTYPE_SIZES[dtype]}")


def read_safetensors_embedding(data: bytes, path: Path) -> Embedding:
    """An embedding from a .safetensors file's bytes. The name is the file stem.

    step / sd_checkpoint / sd_checkpoint_name come from __metadata__ when present (ti-studio
    writes them there; A1111 and kohya files have none).

    Raises:
        BadEmbeddingFile: a damaged header, or no payload A1111 would accept.
    """
    _, metadata = parse_safetensors_header(data, path)
    try:
        tensors = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise BadEmbeddingFile(path, f"is not a valid safetensors file ({str(exc)[:200]})") from None
    embedding = embedding_from_payload(tensors, path, name=path.stem, file_format="safetensors")
    return dataclasses.replace(
        embedding,
        step=_metadata_int(metadata.get("step")),
        checkpoint_hash=metadata.get("sd_checkpoint") or None,
        checkpoint_name=metadata.get("sd_checkpoint_name") or None,
    )


def _metadata_int(text: str | None) -> int | None:
    if text is None or not text.strip().lstrip("-").isdigit():
        return None
    return int(text.strip())


def safetensors_bytes(embedding: Embedding) -> bytes:
    """The bytes of a .safetensors embedding: emb_params (or clip_l/clip_g), metadata as strings.

    Written here rather than by safetensors.torch.save, whose metadata order changes from run
    to run: the same embedding must give the same bytes (and so the same TI hash). Layout per
    the safetensors spec: u64 header length, JSON header padded with spaces to 8 bytes, then
    little-endian float32 data. The name is kept in the metadata for reference only; readers
    name the file by its stem.
    """
    metadata = {key: str(value) for key, value in a1111_metadata(embedding).items() if value is not None}
    header: dict = {METADATA_KEY: metadata} if metadata else {}
    chunks, offset = [], 0
    for name, tensor in sorted(embedding_tensors(embedding).items()):
        chunk = tensor.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(chunk)]}
        chunks.append(chunk)
        offset += len(chunk)
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks)
