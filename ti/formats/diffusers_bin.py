"""diffusers `.bin` embeddings: a pickled `{token: tensor}`, as diffusers' training script writes.

diffusers' `load_textual_inversion` takes the single key as the token and a [n, dim] tensor as
n vectors (extra tokens `<token>_1` … for n > 1), so one dict entry covers multi-vector
embeddings. The key we write is the embedding's name: diffusers users then prompt with it,
as A1111 users prompt with the file stem. Reading goes through a1111_pt.read_pickled_embedding.
"""

from __future__ import annotations

from ti.embedding import Embedding
from ti.formats.a1111_pt import torch_bytes_a1111_accepts
from ti.formats.payload import embedding_tensors


def diffusers_bin_bytes(embedding: Embedding) -> bytes:
    """The bytes of a diffusers `.bin`: `{name: float32 [n, dim]}`, zip cleaned for A1111 too.

    SDXL embeddings have no single-token diffusers .bin layout (diffusers loads SDXL from
    clip_l/clip_g), so they are written as `{"clip_l": …, "clip_g": …}`.
    """
    tensors = embedding_tensors(embedding)
    if embedding.is_sdxl:
        return torch_bytes_a1111_accepts(tensors)
    return torch_bytes_a1111_accepts({embedding.name: tensors["emb_params"]})
