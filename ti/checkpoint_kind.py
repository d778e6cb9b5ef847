"""What a single-file checkpoint holds, read from its keys (a safetensors header; no weights loaded).

A1111-style checkpoints keep the original Stable Diffusion layout: the UNet under
`model.diffusion_model.`, the text encoder under `cond_stage_model.` (SD 1/2) or
`conditioner.embedders.N.` (SDXL: 0 is CLIP L, 1 is OpenCLIP bigG; the refiner has only bigG, as
embedder 0). diffusers' own detector needs bigG's 10th layer (`resblocks.9`), which small and
pruned models lack, so we look at which embedders exist instead.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
SDXL_TEXT_ENCODER_2_KEY = "conditioner.embedders.1.model.positional_embedding"
REFINER_TEXT_ENCODER_PREFIX = "conditioner.embedders.0.model."
SD_TEXT_ENCODER_PREFIX = "cond_stage_model."


@dataclass(frozen=True)
class CheckpointKind:
    family: str  # "sd" (1.x/2.x), "sdxl", or "unknown" (let diffusers try)
    refusal: str | None = None  # why we cannot use it, in words; None when we can


def kind_from_keys(shapes: dict[str, tuple[int, ...]]) -> CheckpointKind:
    """Classify a checkpoint from its tensor names and shapes (pure; table-tested)."""
    input_shape = shapes.get(UNET_INPUT_KEY)
    in_channels = input_shape[1] if input_shape is not None and len(input_shape) == 4 else 4
    if SDXL_TEXT_ENCODER_2_KEY in shapes:
        family = "sdxl"
    elif any(key.startswith(REFINER_TEXT_ENCODER_PREFIX) for key in shapes):
        return CheckpointKind("sdxl", "this is an SDXL refiner (one text encoder, aesthetic-score conditioning); "
                                      "embeddings are trained and used on an SDXL base model")
    elif any(key.startswith(SD_TEXT_ENCODER_PREFIX) for key in shapes):
        family = "sd"
    else:
        return CheckpointKind("unknown")
    if in_channels != 4:
        model = "an inpainting" if in_channels == 9 else "an image-conditioned (e.g. instruct-pix2pix)"
        return CheckpointKind(family, f"this is {model} model (its UNet takes {in_channels} input channels); "
                                      "use a text-to-image model")
    return CheckpointKind(family)


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a .safetensors (header only) or .ckpt (memory-mapped, weights only).

    Raises:
        OSError / ValueError / RuntimeError: unreadable or not a checkpoint.
    """
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    import torch

    # weights_only refuses pickled code; mmap reads no tensor data until touched.
    loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {}
    return {key: tuple(value.shape) for key, value in state.items() if hasattr(value, "shape")}


def _unpickler_detail(exc: pickle.UnpicklingError) -> str:
    """The global torch's refusal names ("Unsupported global: GLOBAL io.open …"), as "; it names io.open"."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return f"; it names {match.group(1)}" if match else ""


def read_checkpoint_kind(path: Path) -> CheckpointKind:
    """The kind of a checkpoint file; "unknown" when its keys cannot be read without loading it."""
    try:
        return kind_from_keys(checkpoint_shapes(path))
    except pickle.UnpicklingError as exc:  # torch's weights_only unpickler met something else than tensors
        return CheckpointKind("unknown", "refused: it holds pickled objects that are not tensors (loading it could "
                                         f"run code; nothing from it was run){_unpickler_detail(exc)}")
    except Exception:  # legacy .ckpt formats, truncated files: diffusers' loader decides (and reports) later
        return CheckpointKind("unknown")
