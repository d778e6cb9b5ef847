"""Lying safetensors headers, and A1111's payload detection order, table-driven."""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_save

from ti.errors import BadEmbeddingFile
from ti.formats import load_embedding_file
from ti.formats.payload import HypernetworkNotEmbedding, embedding_from_payload


def _with_header(header: dict | bytes, data: bytes, claimed_length: int | None = None) -> bytes:
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(header_bytes) if claimed_length is None else claimed_length
    return struct.pack("<Q", length) + header_bytes + data


TENSOR_BYTES = np.arange(8, dtype="<f4").tobytes()
GOOD_ENTRY = {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}

# case -> (file bytes, words expected in the error)
BAD_SAFETENSORS = {
    "shorter than the length field": (b"\x01\x02", "too short"),
    "header longer than the file": (_with_header({"emb_params": GOOD_ENTRY}, TENSOR_BYTES, claimed_length=10_000), "header claims"),
    "absurd header length": (_with_header(b"{}", b"", claimed_length=2**63), "header claims"),
    "header not JSON": (_with_header(b"{not json}", TENSOR_BYTES), "not JSON"),
    "header a list": (_with_header(b"[1, 2]", TENSOR_BYTES), "not a JSON object"),
    "offsets past the end": (_with_header({"emb_params": {**GOOD_ENTRY, "data_offsets": [0, 4096]}}, TENSOR_BYTES), "past the end"),
    "shape does not match bytes": (_with_header({"emb_params": {**GOOD_ENTRY, "shape": [4, 4]}}, TENSOR_BYTES), "needs 64"),
    "unknown dtype": (_with_header({"emb_params": {**GOOD_ENTRY, "dtype": "Q99"}}, TENSOR_BYTES), "unknown dtype"),
    "negative shape": (_with_header({"emb_params": {**GOOD_ENTRY, "shape": [-2, -4]}}, TENSOR_BYTES), "malformed shape"),
    "truncated real layout": (safetensors_save({"emb_params": torch.ones(4, 768)})[:1000], "past the end"),
    "two tensors": (safetensors_save({"a": torch.ones(1, 4), "b": torch.ones(1, 4)}), "holds 2 tensors"),
    "no tensors": (_with_header({"__metadata__": {"x": "y"}}, b""), "holds no embedding"),
    "integer tensor": (safetensors_save({"emb_params": torch.ones(2, 4, dtype=torch.int32)}), "expected floating point"),
    "3-d tensor": (safetensors_save({"emb_params": torch.ones(1, 2, 4)}), "has shape"),
    "sdxl with wrong widths": (safetensors_save({"clip_l": torch.ones(1, 768), "clip_g": torch.ones(1, 1024)}), "SDXL's are 768/1280"),
    "sdxl with different counts": (safetensors_save({"clip_l": torch.ones(1, 768), "clip_g": torch.ones(2, 1280)}), "clip_g has 2"),
}


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
def test_bad_safetensors_file_gives_one_clear_line(tmp_path, case):
    content, expected = BAD_SAFETENSORS[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(BadEmbeddingFile, match=expected) as failure:
        load_embedding_file(path)
    assert str(failure.value).startswith(str(path)) and "\n" not in str(failure.value)


def test_half_precision_safetensors_reads_as_float32(tmp_path):
    path = tmp_path / "half.safetensors"
    path.write_bytes(safetensors_save({"emb_params": torch.full((3, 768), 0.5, dtype=torch.float16)}))
    embedding = load_embedding_file(path)
    assert embedding.vectors.dtype == torch.float32 and embedding.num_vectors == 3


class IncompleteParameterDict:
    """Like a ParameterDict unpickled from old torch: only `_parameters` is usable."""

    def __init__(self, parameters):
        self._parameters = parameters

    def __len__(self):
        raise AttributeError("'ParameterDict' object has no attribute '_keys'")


VEC = torch.arange(12.0).reshape(3, 4)
# case -> (payload, expected vectors or error words, is_sdxl)
PAYLOADS = {
    "string_to_param": ({"string_to_param": {"*": VEC}, "step": 5}, VEC, False),
    "string_to_param 1-d": ({"string_to_param": {"*": VEC[0]}}, VEC[:1], False),
    "ParameterDict _parameters": ({"string_to_param": IncompleteParameterDict(OrderedDict(x=torch.nn.Parameter(VEC)))}, VEC, False),
    "string_to_param wins over clip_l/g": ({"string_to_param": {"*": VEC}, "clip_l": torch.ones(1, 768), "clip_g": torch.ones(1, 1280)}, VEC, False),
    "sdxl": ({"clip_l": torch.ones(2, 768), "clip_g": torch.zeros(2, 1280)}, torch.cat([torch.ones(2, 768), torch.zeros(2, 1280)], 1), True),
    "diffusers token": ({"<tok>": VEC[0]}, VEC[:1], False),
    "emb_params": ({"emb_params": VEC.double()}, VEC, False),
    "numpy array (A1111 takes tensors only)": ({"emb_params": VEC.numpy()}, "holds no embedding", None),
    "string_to_param with two entries": ({"string_to_param": {"*": VEC, "x": VEC}}, "exactly one", None),
    "string_to_param not a dict": ({"string_to_param": [VEC]}, "expected a dict", None),
    "tensor plus other keys": ({"emb": VEC, "step": 3}, "holds no embedding", None),
    "empty dict": ({}, "holds no embedding", None),
    "not a dict": ([VEC], "holds a list", None),
    "zero vectors": ({"emb_params": torch.ones(0, 768)}, "has shape", None),
}


@pytest.mark.parametrize("case", list(PAYLOADS))
def test_payload_detection(case):
    payload, expected, is_sdxl = PAYLOADS[case]
    if isinstance(expected, str):
        with pytest.raises(BadEmbeddingFile, match=expected):
            embedding_from_payload(payload, Path("x.pt"), "x", "a1111-pt")
        return
    embedding = embedding_from_payload(payload, Path("x.pt"), "x", "a1111-pt")
    assert torch.equal(embedding.vectors, expected) and embedding.is_sdxl == is_sdxl
    assert embedding.vectors.dtype == torch.float32 and not embedding.vectors.requires_grad


@pytest.mark.parametrize(
    "raw, expected",
    [(7, 7), (np.int64(7), 7), (torch.tensor(7), 7), ("7", 7), (None, None), (True, None), (7.5, None), ("seven", None)],
)
def test_step_values(raw, expected):
    embedding = embedding_from_payload({"string_to_param": {"*": VEC}, "step": raw}, Path("x.pt"), "x", "a1111-pt")
    assert embedding.step == expected


def test_hypernetwork_dict_is_recognised():
    hypernetwork = {768: ({"linear.0.weight": torch.ones(2, 2)}, {}), 320: ({}, {}), "name": "hn", "step": 10}
    with pytest.raises(HypernetworkNotEmbedding, match="is a hypernetwork file"):
        embedding_from_payload(hypernetwork, Path("hn.pt"), "hn", "a1111-pt")
