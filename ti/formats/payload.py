"""The dict inside an embedding file -> Embedding, and back (a1111-compat.md §1).

Every container (.pt, .bin, .safetensors, image text chunk, image pixel layer) ends up as a
dict; this module is the one place that decides what that dict means.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ti.embedding import SDXL_G_WIDTH, SDXL_L_WIDTH, Embedding
from ti.errors import BadEmbeddingFile

# A1111 writes this constant token id into every .pt it saves.
A1111_STRING_TO_TOKEN = {"*": 265}


class HypernetworkNotEmbedding(BadEmbeddingFile):
    """The file is an A1111 hypernetwork (integer keys such as 768, 320), not an embedding."""


def looks_like_hypernetwork(data: Any) -> bool:
    """True for A1111 hypernetwork dicts, whose integer keys (768, 320, …) are layer widths."""
    return isinstance(data, Mapping) and any(isinstance(key, int) and not isinstance(key, bool) for key in data)


def _as_vectors(value: Any, path: Path, where: str) -> torch.Tensor:
    """A stored tensor as float32 [n, dim]; 1-D tensors become one vector."""
    if not isinstance(value, torch.Tensor):
        raise BadEmbeddingFile(path, f"{where} holds a {type(value).__name__}, expected a tensor")
    if not value.is_floating_point():
        raise BadEmbeddingFile(path, f"{where} is a {value.dtype} tensor, expected floating point")
    tensor = value.detach().to(device="cpu", dtype=torch.float32)
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise BadEmbeddingFile(path, f"{where} has shape {tuple(value.shape)}, expected [vectors, width]")
    return tensor.contiguous()


def _parameter_dict_entries(value: Any) -> Mapping:
    """string_to_param's mapping; for a pickled torch.nn.ParameterDict, its `_parameters`.

    A ParameterDict unpickled from an old torch (hades.pt) may be half-built: its own
    mapping methods rely on attributes the old pickle never had, but `_parameters` is there.
    """
    parameters = getattr(value, "__dict__", {}).get("_parameters")
    if isinstance(parameters, Mapping):
        return parameters
    return value


def _payload_vectors(data: Mapping, path: Path) -> tuple[torch.Tensor, bool]:
    """Detection in A1111's order. Returns (vectors [n, dim], is_sdxl)."""
    if "string_to_param" in data:
        entries = _parameter_dict_entries(data["string_to_param"])
        if not isinstance(entries, Mapping):
            raise BadEmbeddingFile(path, f"string_to_param is a {type(entries).__name__}, expected a dict")
        if len(entries) != 1:
            raise BadEmbeddingFile(path, f"string_to_param holds {len(entries)} entries; an embedding holds exactly one")
        return _as_vectors(next(iter(entries.values())), path, "string_to_param"), False
    if "clip_l" in data and "clip_g" in data:
        clip_l = _as_vectors(data["clip_l"], path, "clip_l")
        clip_g = _as_vectors(data["clip_g"], path, "clip_g")
        if (clip_l.shape[1], clip_g.shape[1]) != (SDXL_L_WIDTH, SDXL_G_WIDTH):
            raise BadEmbeddingFile(path, f"clip_l/clip_g are {clip_l.shape[1]}/{clip_g.shape[1]} wide, SDXL's are {SDXL_L_WIDTH}/{SDXL_G_WIDTH}")
        if clip_l.shape[0] != clip_g.shape[0]:
            raise BadEmbeddingFile(path, f"clip_l has {clip_l.shape[0]} vectors but clip_g has {clip_g.shape[0]}")
        return torch.cat([clip_l, clip_g], dim=1), True
    tensors = {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}
    if len(tensors) == 1 and len(data) == 1:
        key, value = next(iter(tensors.items()))
        return _as_vectors(value, path, f"tensor {str(key)[:40]!r}"), False
    if len(tensors) > 1:
        names = ", ".join(str(key)[:40] for key in list(tensors)[:4])
        raise BadEmbeddingFile(path, f"holds {len(tensors)} tensors ({names}); an embedding file holds one")
    keys = ", ".join(repr(key)[:40] for key in list(data)[:6]) or "nothing"
    raise BadEmbeddingFile(path, f"holds no embedding (keys: {keys}); expected string_to_param, clip_l/clip_g or a single tensor")


def _optional_int(value: Any) -> int | None:
    """step as an int; files hold ints, numpy ints, 0-d tensors, digit strings, or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def embedding_from_payload(data: Any, path: Path, name: str, file_format: str) -> Embedding:
    """Build an Embedding from the dict a file held.

    Args:
        data: the unpickled / decoded dict.
        path: the file, for messages.
        name: the embedding's name (the caller applies A1111's naming rule).
        file_format: the value of Embedding.format.
    Returns:
        the Embedding (source_path and sha256 are left for the caller).
    Raises:
        HypernetworkNotEmbedding: the dict is an A1111 hypernetwork.
        BadEmbeddingFile: no payload A1111 would accept.
    """
    if looks_like_hypernetwork(data):
        raise HypernetworkNotEmbedding(path, "is a hypernetwork file, not an embedding")
    if not isinstance(data, Mapping):
        raise BadEmbeddingFile(path, f"holds a {type(data).__name__}, expected a dict with the embedding")
    vectors, is_sdxl = _payload_vectors(data, path)
    return Embedding(
        name=name,
        vectors=vectors,
        step=_optional_int(data.get("step")),
        checkpoint_hash=_optional_str(data.get("sd_checkpoint")),
        checkpoint_name=_optional_str(data.get("sd_checkpoint_name")),
        format=file_format,
        is_sdxl=is_sdxl,
    )


def _owned_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A detached float32 copy with its own storage (no views of a larger tensor get saved)."""
    return tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()


def embedding_tensors(embedding: Embedding) -> dict[str, torch.Tensor]:
    """The embedding's tensors as files store them: clip_l/clip_g for SDXL, else one tensor.

    The single tensor is keyed "emb_params" (kohya's and A1111's safetensors key).
    """
    if embedding.is_sdxl:
        return {key: _owned_tensor(value) for key, value in embedding.sdxl_parts().items()}
    return {"emb_params": _owned_tensor(embedding.vectors)}


def a1111_metadata(embedding: Embedding) -> dict[str, Any]:
    """name, step, sd_checkpoint, sd_checkpoint_name as A1111 writes them (None when unknown)."""
    return {
        "name": embedding.name,
        "step": embedding.step,
        "sd_checkpoint": embedding.checkpoint_hash,
        "sd_checkpoint_name": embedding.checkpoint_name,
    }


def a1111_dict(embedding: Embedding) -> dict[str, Any]:
    """The dict A1111 saves in a .pt (and in an image embedding's JSON).

    SDXL has no A1111 .pt layout (A1111 cannot create SDXL embeddings): an SDXL file is
    {clip_l, clip_g} and nothing else, as kohya writes it. A1111's loader runs `v.detach()` over
    every key of such a dict, so a name or step beside the tensors makes it fail
    ('str' object has no attribute 'detach'); SDXL metadata lives in .safetensors headers instead.
    """
    if embedding.is_sdxl:
        return embedding_tensors(embedding)
    payload = {"string_to_token": dict(A1111_STRING_TO_TOKEN), "string_to_param": {"*": _owned_tensor(embedding.vectors)}}
    return {**payload, **a1111_metadata(embedding)}
