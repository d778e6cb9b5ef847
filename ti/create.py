"""Create a new embedding: its name, and vectors initialised from text (A1111's rules, not its crash)."""

from __future__ import annotations

from pathlib import Path

import torch

from ti.embedding import Embedding
from ti.errors import ConfigError
from ti.prompt import CHUNK_LENGTH

_ALLOWED_PUNCTUATION = "._- "
# Names become file names with suffixes ("<name>-100000.pt.optim", and a temp name around that
# while saving); most file systems stop at 255 bytes.
MAX_NAME_BYTES = 150
# Windows opens these as devices whatever the extension ("nul.pt" is NUL); A1111's users are
# mostly on Windows, and files travel.
_WINDOWS_DEVICE_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def clean_embedding_name(name: str) -> str:
    """Keep characters that are alphanumeric or one of `._- ` (A1111), then refuse what is left empty or path-like.

    Raises:
        ConfigError("name"): empty after cleaning, only dots (".", ".."), hidden (".x"), over
        MAX_NAME_BYTES, or a Windows device name ("con", "nul", "com1", …).
    """
    cleaned = "".join(ch for ch in (name or "") if ch.isalnum() or ch in _ALLOWED_PUNCTUATION).strip()
    if not cleaned:
        raise ConfigError("name", f"{name!r} has no usable characters (letters, digits, '.', '_', '-', space)")
    if set(cleaned) <= {"."} or cleaned.startswith("."):
        raise ConfigError("name", f"{name!r} would make a hidden or path-like file name")
    if len(cleaned.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ConfigError("name", f"is {len(cleaned)} characters long; file names need it at most {MAX_NAME_BYTES} bytes")
    if cleaned.split(".")[0].strip().lower() in _WINDOWS_DEVICE_NAMES:
        raise ConfigError("name", f"{cleaned!r} is a device name on Windows (CON, NUL, COM1, …); choose another")
    return cleaned


def init_vectors(tokenizer, token_embedding_weight: torch.Tensor, init_text: str, num_vectors: int) -> torch.Tensor:
    """Vectors [num_vectors, dim] spread from the init text's token rows, as A1111 does.

    vec[i] = rows[floor(i·n / num_vectors)], so 2 tokens over 5 vectors give rows 0,0,0,1,1.
    Empty or whitespace-only text gives zeros (A1111 crashes on whitespace).
    """
    if not 1 <= num_vectors <= CHUNK_LENGTH:
        raise ConfigError("vectors per token", f"must be between 1 and {CHUNK_LENGTH}, got {num_vectors}")
    dim = token_embedding_weight.shape[1]
    vectors = torch.zeros(num_vectors, dim, dtype=torch.float32)
    if not init_text or not init_text.strip():
        return vectors
    ids = tokenizer(init_text, add_special_tokens=False, truncation=True, max_length=num_vectors)["input_ids"][:num_vectors]
    if not ids:
        return vectors
    rows = token_embedding_weight[torch.tensor(ids)].detach().float().cpu()
    for i in range(num_vectors):
        vectors[i] = rows[i * len(ids) // num_vectors]
    return vectors


def create_embedding(model, name: str, init_text: str, num_vectors: int, embeddings_dir: Path,
                     overwrite: bool = False) -> Path:
    """Write embeddings_dir/<name>.pt (A1111 keys, step 0, this model's hash and name); returns the path.

    Raises:
        ConfigError: bad name or vector count, or the file exists and overwrite is off.
    """
    from ti.formats import save_embedding_file

    clean_name = clean_embedding_name(name)
    is_sdxl = bool(getattr(model, "is_sdxl", False))
    # SDXL: {clip_l, clip_g} in .safetensors, whose header keeps name, step and checkpoint (an SDXL
    # .pt holds the two tensors only, for A1111's loader).
    path = Path(embeddings_dir) / f"{clean_name}{'.safetensors' if is_sdxl else '.pt'}"
    if path.exists() and not overwrite:
        raise ConfigError("name", f"{path} already exists; tick overwrite to replace it")
    weight = model.text_encoder.get_input_embeddings().weight
    vectors = init_vectors(model.tokenizer, weight, init_text, int(num_vectors))
    if is_sdxl:  # the init text through both tokenizers, each encoder's own rows
        weight_2 = model.text_encoder_2.get_input_embeddings().weight
        vectors = torch.cat([vectors, init_vectors(model.tokenizer_2, weight_2, init_text, int(num_vectors))], dim=1)
    embedding = Embedding(name=clean_name, vectors=vectors, step=0, checkpoint_hash=model.short_hash,
                          checkpoint_name=model.name.replace("/", "_").replace("\\", "_"), is_sdxl=is_sdxl)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_embedding_file(embedding, path)
