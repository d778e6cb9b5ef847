"""The in-memory embedding: what every file format reads into and writes from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

SD1_WIDTH, SD2_WIDTH, SDXL_L_WIDTH, SDXL_G_WIDTH = 768, 1024, 768, 1280
SDXL_WIDTH = SDXL_L_WIDTH + SDXL_G_WIDTH


def model_family_for_width(width: int) -> str:
    """sd1 / sd2 / sdxl from a text-encoder (or embedding) width; anything else is 'unknown'."""
    return {SD1_WIDTH: "sd1", SD2_WIDTH: "sd2", SDXL_WIDTH: "sdxl"}.get(int(width), "unknown")


@dataclass
class Embedding:
    """A textual-inversion embedding.

    vectors: float32 [num_vectors, dim]. SDXL embeddings keep clip_l and clip_g side by side
    (dim 768 + 1280 = 2048) with is_sdxl=True, so they can be split back on write.
    """

    name: str
    vectors: torch.Tensor
    step: int | None = None
    checkpoint_hash: str | None = None
    checkpoint_name: str | None = None
    format: str = "a1111-pt"
    is_sdxl: bool = False
    source_path: Path | None = None
    sha256: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.vectors.dim() == 1:
            self.vectors = self.vectors.unsqueeze(0)
        if self.vectors.dim() != 2:
            raise ValueError(f"embedding {self.name!r}: vectors must be [n, dim], got {tuple(self.vectors.shape)}")

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def model_family(self) -> str:
        return "sdxl" if self.is_sdxl else model_family_for_width(self.dim)

    @property
    def shorthash(self) -> str | None:
        """A1111's TI hash: the first 12 hex digits of the file's sha256."""
        return self.sha256[:12] if self.sha256 else None

    def sdxl_parts(self) -> dict[str, torch.Tensor]:
        if not self.is_sdxl:
            raise ValueError(f"embedding {self.name!r} is not an SDXL embedding")
        return {"clip_l": self.vectors[:, :SDXL_L_WIDTH], "clip_g": self.vectors[:, SDXL_L_WIDTH:]}
