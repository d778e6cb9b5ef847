"""A1111 `.pt` embeddings, and the torch zip writer every pickled format here shares.

A1111 v1.10.1 refuses any `.pt`/`.bin` whose zip holds members outside
`^([^/]+)/((data/\\d+)|version|byteorder|.data/serialization_id|(data\\.pkl))$` (a1111-compat.md
§1), and torch >= 2.5 adds `.format_version` and `.storage_alignment` to everything it saves.
`torch_bytes_a1111_accepts` saves with torch and rewrites the archive without those two.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from ti.embedding import Embedding
from ti.formats.payload import a1111_dict, embedding_from_payload
from ti.formats.safe_load import load_torch_bytes

# A1111's regex, verbatim (its '.' before 'data/serialization_id' is unescaped there too).
A1111_ZIP_MEMBER = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
# torch aligns tensor data to 64 bytes inside the zip so it can be memory-mapped; keep that.
_STORAGE_ALIGNMENT = 64
# Extra-field id torch uses for its alignment padding ("FB").
_PADDING_EXTRA_ID = 0x4246
_ZIP_LOCAL_HEADER_SIZE = 30
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # same bytes for the same tensors: stable sha256


def _padding_extra(offset: int, filename: str) -> bytes:
    """A local-header extra field that puts the member's data at a multiple of 64 bytes."""
    data_start = offset + _ZIP_LOCAL_HEADER_SIZE + len(filename.encode("utf-8")) + 4
    padding = -data_start % _STORAGE_ALIGNMENT
    return struct.pack("<HH", _PADDING_EXTRA_ID, padding) + b"\0" * padding


def torch_bytes_a1111_accepts(obj: Any) -> bytes:
    """torch.save(obj), with the archive rewritten to hold only members A1111's loader accepts.

    Args:
        obj: what to save (dicts of tensors, str, int, None).
    Returns:
        the file's bytes; torch.load reads them and every member matches A1111_ZIP_MEMBER.
    """
    saved = io.BytesIO()
    torch.save(obj, saved)
    source = zipfile.ZipFile(io.BytesIO(saved.getvalue()))
    cleaned = io.BytesIO()
    with zipfile.ZipFile(cleaned, "w", compression=zipfile.ZIP_STORED) as target:
        for member in source.infolist():
            if not A1111_ZIP_MEMBER.match(member.filename):
                continue  # .format_version, .storage_alignment: metadata torch.load does without
            info = zipfile.ZipInfo(member.filename, date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.extra = _padding_extra(cleaned.tell(), member.filename)
            target.writestr(info, source.read(member))
    return cleaned.getvalue()


def read_pickled_embedding(data: bytes, path: Path) -> Embedding:
    """An embedding from a pickled .pt or .bin file's bytes (safe loading; see safe_load).

    The name is the file stem (A1111 ignores a stored `name`). The format follows the
    content, since people rename files: "a1111-pt" for string_to_param, "diffusers" for the
    single-tensor dict diffusers writes, and by suffix otherwise (SDXL clip_l/clip_g).

    Raises:
        UnsafeFile, BadEmbeddingFile, HypernetworkNotEmbedding.
    """
    loaded = load_torch_bytes(data, path)
    is_single_tensor_dict = isinstance(loaded, dict) and len(loaded) == 1 and isinstance(next(iter(loaded.values())), torch.Tensor)
    if isinstance(loaded, dict) and "string_to_param" in loaded:
        file_format = "a1111-pt"
    elif is_single_tensor_dict or path.suffix.lower() == ".bin":
        file_format = "diffusers"
    else:
        file_format = "a1111-pt"
    return embedding_from_payload(loaded, path, name=path.stem, file_format=file_format)


def a1111_pt_bytes(embedding: Embedding) -> bytes:
    """The bytes of an A1111 `.pt` for this embedding.

    Keys: string_to_token {"*": 265}, string_to_param {"*": tensor[n, dim]}, name, step,
    sd_checkpoint, sd_checkpoint_name (SDXL: clip_l/clip_g instead of the first two).
    """
    return torch_bytes_a1111_accepts(a1111_dict(embedding))
