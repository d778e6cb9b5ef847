"""Splice embedding vectors into the text encoder's token embeddings, in scope.

The hook wraps the token-embedding layer of one text-encoder instance for the duration of a
`with` block and restores the original in `finally`; no library class is patched. Vectors are
spliced with torch.cat, so gradients reach them: training and generation share this code.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ti.locks import module_lock

# (offset into the content tokens, vectors [n, dim]) for each batch row.
RowSplices = Sequence[tuple[int, torch.Tensor]]


class SplicingEmbedding(nn.Module):
    """Token embedding lookup, then rows offset+1… (after BOS) replaced by the given vectors."""

    def __init__(self, token_embedding: nn.Embedding, splices_per_row: Sequence[RowSplices]):
        super().__init__()
        self.token_embedding = token_embedding
        self.splices_per_row = splices_per_row

    @property
    def weight(self) -> torch.Tensor:  # some callers read .weight of the input embeddings
        return self.token_embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.token_embedding(input_ids)
        if len(self.splices_per_row) != embeds.shape[0]:
            raise ValueError(f"hook has splices for {len(self.splices_per_row)} rows, batch has {embeds.shape[0]}")
        rows = []
        for row, splices in zip(embeds, self.splices_per_row):
            for offset, vectors in splices:
                start = offset + 1  # skip BOS
                # Never overwrite the final EOS.
                count = min(vectors.shape[0], row.shape[0] - 1 - start)
                vectors = vectors[:count].to(device=row.device, dtype=row.dtype)
                row = torch.cat([row[:start], vectors, row[start + count :]])
            rows.append(row)
        return torch.stack(rows)


@contextmanager
def token_embedding_hook(text_encoder: nn.Module, splices_per_row: Sequence[RowSplices]) -> Iterator[None]:
    """Within the block, text_encoder(input_ids) sees the spliced vectors for each batch row."""
    # While installed, another thread's encode waits (encoding takes milliseconds).
    with module_lock(text_encoder):
        original = text_encoder.get_input_embeddings()
        text_encoder.set_input_embeddings(SplicingEmbedding(original, splices_per_row))
        try:
            yield
        finally:
            text_encoder.set_input_embeddings(original)
