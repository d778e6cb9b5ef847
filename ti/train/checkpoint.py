"""Saving and resuming a run: the embedding file, and the optimizer state beside it.

`<file>.pt.optim` is A1111's side file: {"hash": the vectors' 4-hex checksum,
"optimizer_state_dict": AdamW's state}, written so A1111's safe loader accepts it. We add
"ti_state": {"step", "seed", "grad_scaler"} (A1111 ignores unknown keys). Since every random
draw is keyed by (seed, step, …) (seeds.py), that is all an exact resume needs.

Both files are written atomically. They are two files, so a crash can leave a new .pt beside an
old .optim; the checksum and the step inside ti_state catch that, and the run then starts a
fresh optimizer state and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ti.embedding import Embedding
from ti.errors import BadEmbeddingFile, TrainingError
from ti.formats import load_embedding_file, load_torch_file, save_embedding_file, write_file_atomically
from ti.formats.a1111_pt import torch_bytes_a1111_accepts

OPTIMIZER_SUFFIX = ".optim"
_OPTIMIZER_FILE_KIND = "an optimizer state file"


def a1111_checksum(vectors: torch.Tensor) -> str:
    """A1111's 4-hex checksum of an embedding's vectors (a1111-compat.md §1).

    r = ((r·281) XOR (trunc(v)·997)) & 0xFFFFFFFF over v in vectors.flatten()·100 (the
    product taken in float32, as A1111 does), then the low 16 bits.
    """
    scaled = (vectors.detach().to(device="cpu", dtype=torch.float32).reshape(-1) * 100).tolist()
    checksum = 0
    for value in scaled:
        checksum = ((checksum * 281) ^ (int(value) * 997)) & 0xFFFFFFFF
    return f"{checksum & 0xFFFF:04x}"


def optimizer_path(embedding_path: Path) -> Path:
    """`name.pt` -> `name.pt.optim` (A1111's naming)."""
    embedding_path = Path(embedding_path)
    return embedding_path.with_name(embedding_path.name + OPTIMIZER_SUFFIX)


@dataclass
class ResumeState:
    """What a saved run left for the next one."""

    optimizer_state: dict | None  # None: start a fresh optimizer
    grad_scaler_state: dict | None
    seed: int | None
    note: str | None  # why the optimizer state was not used, when it was not


def save_checkpoint(embedding: Embedding, path: Path, optimizer: torch.optim.Optimizer, seed: int,
                    grad_scaler_state: dict | None = None) -> Path:
    """Write the embedding (`path`, any suffix save_embedding_file knows) and its .optim file.

    The .optim goes first: if we crash between the two, the old .pt and the new .optim disagree
    on the checksum and step, and resuming ignores the .optim rather than mixing them.
    """
    state = {
        "hash": a1111_checksum(embedding.vectors),
        "optimizer_state_dict": optimizer.state_dict(),
        "ti_state": {"step": embedding.step, "seed": seed, "grad_scaler": grad_scaler_state},
    }
    write_file_atomically(optimizer_path(path), torch_bytes_a1111_accepts(state))
    return save_embedding_file(embedding, path)


def load_start_embedding(path: Path, expected_width: int) -> Embedding:
    """The embedding a run starts from.

    Raises:
        TrainingError: missing (with how to create it), unreadable, or the wrong width for the model.
    """
    path = Path(path)
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob(f"{path.stem}.*") if p.suffix != OPTIMIZER_SUFFIX) \
            if path.parent.is_dir() else []
        hint = (f"; found {', '.join(others)}: convert it to .pt first (python -m ti convert)" if others else
                f"; create it first: python -m ti create {path.stem} --init-text '*' --vectors 1")
        raise TrainingError(f"{path}: no such embedding{hint}")
    try:
        embedding = load_embedding_file(path)
    except BadEmbeddingFile as error:
        raise TrainingError(f"cannot train {path.name}: {error}") from None
    if embedding.is_sdxl:
        raise TrainingError(f"{path}: SDXL embeddings cannot be trained yet")
    if embedding.dim != expected_width:
        raise TrainingError(f"{path}: its vectors are {embedding.dim} wide, but this model's text encoder "
                            f"is {expected_width} wide; create the embedding with this model")
    return embedding


def load_resume_state(path: Path, embedding: Embedding) -> ResumeState:
    """The optimizer state saved beside `path`, if it belongs to exactly these vectors and step."""
    side_file = optimizer_path(path)
    if not side_file.is_file():
        note = None if not embedding.step else f"{side_file.name} not found: the optimizer state starts fresh"
        return ResumeState(None, None, None, note)
    try:
        saved = load_torch_file(side_file, kind=_OPTIMIZER_FILE_KIND)
    except BadEmbeddingFile as error:
        return ResumeState(None, None, None, f"{error}; the optimizer state starts fresh")
    if not isinstance(saved, dict) or not isinstance(saved.get("optimizer_state_dict"), dict):
        return ResumeState(None, None, None, f"{side_file.name} holds no optimizer state; it starts fresh")
    ti_state = saved.get("ti_state") if isinstance(saved.get("ti_state"), dict) else {}
    if saved.get("hash") != a1111_checksum(embedding.vectors):
        return ResumeState(None, None, None, f"{side_file.name} was saved for other vectors (checksum "
                                             f"{saved.get('hash')}, file has {a1111_checksum(embedding.vectors)}); "
                                             f"the optimizer state starts fresh")
    if "step" in ti_state and ti_state["step"] != embedding.step:
        return ResumeState(None, None, None, f"{side_file.name} was saved at step {ti_state['step']}, the "
                                             f"embedding is at step {embedding.step}; the optimizer state starts fresh")
    return ResumeState(saved["optimizer_state_dict"], ti_state.get("grad_scaler"), ti_state.get("seed"), None)
