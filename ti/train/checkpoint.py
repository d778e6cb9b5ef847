"""Saving and resuming a run: the embedding or hypernetwork file, and the optimizer state beside it.

`<file>.pt.optim` is A1111's side file: {"hash": the vectors' 4-hex checksum,
"optimizer_state_dict": AdamW's state}, written so A1111's safe loader accepts it. We add
"ti_state": {"step", "seed", "grad_scaler"} (A1111 ignores unknown keys). Since every random
draw is keyed by (seed, step, …) (seeds.py), that is all an exact resume needs.

A hypernetwork's `.optim` is A1111's too: {"optimizer_name": "AdamW", "hash": the first 10 hex
digits of the .pt's sha256, "optimizer_state_dict"}, plus the same "ti_state". The parameter order
(widths in file order, key module then value module, layers in order) is A1111's, so a matching
A1111 .optim resumes here.

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
from ti.formats.safe_load import sha256_hex
from ti.hypernetwork import Hypernetwork, hypernetwork_file_bytes

OPTIMIZER_SUFFIX = ".optim"
HYPERNETWORK_OPTIMIZER_NAME = "AdamW"  # the only optimizer we train hypernetworks with (A1111's default)
HYPERNETWORK_HASH_LENGTH = 10
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
    if embedding.dim != expected_width:
        raise TrainingError(f"{path}: its vectors are {embedding.dim} wide, but this model's text encoder "
                            f"is {expected_width} wide; create the embedding with this model")
    return embedding


def _read_optimizer_side_file(side_file: Path, step: int | None) -> tuple[dict, dict] | ResumeState:
    """The .optim file as (saved dict, our ti_state), or a ResumeState saying why training starts fresh."""
    if not side_file.is_file():
        note = None if not step else f"{side_file.name} not found: the optimizer state starts fresh"
        return ResumeState(None, None, None, note)
    try:
        saved = load_torch_file(side_file, kind=_OPTIMIZER_FILE_KIND)
    except BadEmbeddingFile as error:
        return ResumeState(None, None, None, f"{error}; the optimizer state starts fresh")
    if not isinstance(saved, dict) or not isinstance(saved.get("optimizer_state_dict"), dict):
        return ResumeState(None, None, None, f"{side_file.name} holds no optimizer state; it starts fresh")
    ti_state = saved.get("ti_state") if isinstance(saved.get("ti_state"), dict) else {}
    return saved, ti_state


def load_resume_state(path: Path, embedding: Embedding) -> ResumeState:
    """The optimizer state saved beside `path`, if it belongs to exactly these vectors and step."""
    side_file = optimizer_path(path)
    read = _read_optimizer_side_file(side_file, embedding.step)
    if isinstance(read, ResumeState):
        return read
    saved, ti_state = read
    if saved.get("hash") != a1111_checksum(embedding.vectors):
        return ResumeState(None, None, None, f"{side_file.name} was saved for other vectors (checksum "
                                             f"{saved.get('hash')}, file has {a1111_checksum(embedding.vectors)}); "
                                             f"the optimizer state starts fresh")
    if "step" in ti_state and ti_state["step"] != embedding.step:
        return ResumeState(None, None, None, f"{side_file.name} was saved at step {ti_state['step']}, the "
                                             f"embedding is at step {embedding.step}; the optimizer state starts fresh")
    return ResumeState(saved["optimizer_state_dict"], ti_state.get("grad_scaler"), ti_state.get("seed"), None)


def save_hypernetwork_checkpoint(hypernetwork: Hypernetwork, path: Path, optimizer: torch.optim.Optimizer, seed: int,
                                 grad_scaler_state: dict | None = None) -> Path:
    """Write the hypernetwork to `path` and A1111's .optim beside it (the .optim first, as above).

    The .optim's hash is that of the bytes about to be written (the writer is deterministic).
    Sets hypernetwork.sha256 to the new file's. Returns the path written.
    """
    data = hypernetwork_file_bytes(hypernetwork)
    sha256 = sha256_hex(data)
    state = {
        "optimizer_name": HYPERNETWORK_OPTIMIZER_NAME,
        "hash": sha256[:HYPERNETWORK_HASH_LENGTH],
        "optimizer_state_dict": optimizer.state_dict(),
        "ti_state": {"step": hypernetwork.step, "seed": seed, "grad_scaler": grad_scaler_state},
    }
    path = Path(path)
    write_file_atomically(optimizer_path(path), torch_bytes_a1111_accepts(state))
    written = write_file_atomically(path, data)
    hypernetwork.sha256 = sha256
    return written


def load_hypernetwork_resume_state(path: Path, hypernetwork: Hypernetwork) -> ResumeState:
    """The optimizer state saved beside `path`, if it was saved for exactly this file (its
    sha256's first 10 hex digits) and step, by AdamW. `hypernetwork` is the file as loaded."""
    side_file = optimizer_path(path)
    read = _read_optimizer_side_file(side_file, hypernetwork.step)
    if isinstance(read, ResumeState):
        return read
    saved, ti_state = read
    optimizer_name = saved.get("optimizer_name", HYPERNETWORK_OPTIMIZER_NAME)
    if optimizer_name != HYPERNETWORK_OPTIMIZER_NAME:
        return ResumeState(None, None, None, f"{side_file.name} is the state of {optimizer_name}; we train with "
                                             f"{HYPERNETWORK_OPTIMIZER_NAME}, so the optimizer state starts fresh")
    file_hash = (hypernetwork.sha256 or "")[:HYPERNETWORK_HASH_LENGTH]
    if saved.get("hash") != file_hash:
        return ResumeState(None, None, None, f"{side_file.name} was saved for another file (hash {saved.get('hash')}, "
                                             f"{Path(path).name} has {file_hash}); the optimizer state starts fresh")
    if "step" in ti_state and ti_state["step"] != hypernetwork.step:
        return ResumeState(None, None, None, f"{side_file.name} was saved at step {ti_state['step']}, the "
                                             f"hypernetwork is at step {hypernetwork.step}; the optimizer state starts fresh")
    return ResumeState(saved["optimizer_state_dict"], ti_state.get("grad_scaler"), ti_state.get("seed"), None)
