"""The model a training run uses: the loaded one, or a copy in the run's precision; plus the
speed and memory options (TrainConfig: mixed_precision, gradient_checkpointing, channels_last,
compile_unet).

    with model_for_training(model, config) as run_model:
        ... train on run_model ...

- mixed_precision picks the dtype of the frozen UNet, VAE and text encoder, as diffusers' and
  kohya's training scripts do: "bf16" / "fp16" cast them, the trained tensors and the optimizer
  state stay float32 (targets make them so), and fp16 gets a GradScaler in the loop. When the
  loaded model already has that dtype (the CLI loads it so) nothing is copied; otherwise the run
  gets a cast copy that shares nothing with the loaded model, so generation in another tab keeps
  its precision and results, and the copy is freed when the run ends.
- gradient_checkpointing and channels_last are set on the run's UNet and undone afterwards when
  that UNet is the shared one (checkpointing only acts while gradients are on, so generation
  meanwhile is unaffected; channels_last changes its speed, not its results).
- compile_unet compiles a shallow copy of the UNet (the same weights and submodules), so the
  shared UNet's forward stays the eager one.
"""

from __future__ import annotations

import copy
import inspect
import logging
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import torch
from torch import nn

from ti.errors import TrainingError
from ti.locks import share_lock
from ti.pipeline import LoadedModel
from ti.train.config import TrainConfig

log = logging.getLogger(__name__)

DTYPE_FOR_MODE = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def training_dtype(model: LoadedModel, mixed_precision: str) -> torch.dtype:
    """The frozen modules' dtype for a run: the model's own for "auto".

    Raises:
        TrainingError: bf16 on a GPU without bf16 support.
    """
    if mixed_precision == "auto":
        return model.dtype
    dtype = DTYPE_FOR_MODE[mixed_precision]
    if dtype == torch.bfloat16 and model.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"mixed precision bf16: {torch.cuda.get_device_name(model.device)} has no bfloat16 "
                            f"support; use fp16")
    return dtype


def cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of module whose floating-point parameters and buffers are cast to dtype, built
    without a full-precision copy first (deepcopy is handed the cast tensors up front)."""
    memo: dict[int, object] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in memo:
            continue
        cast = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach().clone()
        memo[id(tensor)] = nn.Parameter(cast, requires_grad=False) if isinstance(tensor, nn.Parameter) else cast
    return copy.deepcopy(module, memo)


def _pipeline_with(pipe, **components):
    """A new pipeline object of pipe's class with some components replaced (the others shared)."""
    parts = {name: getattr(pipe, name) for name in pipe.components}
    parts.update(components)
    if "requires_safety_checker" in inspect.signature(type(pipe).__init__).parameters:
        parts["requires_safety_checker"] = False  # ours never has one; without this it warns
    new_pipe = type(pipe)(**parts)
    new_pipe.set_progress_bar_config(disable=True)
    return new_pipe


def _cast_model(model: LoadedModel, dtype: torch.dtype) -> LoadedModel:
    pipe = model.pipe
    names = ("unet", "vae", "text_encoder", "text_encoder_2") if model.is_sdxl else ("unet", "vae", "text_encoder")
    cast = {name: cast_copy(getattr(pipe, name), dtype) for name in names}
    return replace(model, pipe=_pipeline_with(pipe, **cast), dtype=dtype)


@contextmanager
def model_for_training(model: LoadedModel, config: TrainConfig) -> Iterator[LoadedModel]:
    """The model the run trains with (see the module docstring); undoes what it set on exit."""
    dtype = training_dtype(model, config.mixed_precision)
    run_model = model if dtype == model.dtype else _cast_model(model, dtype)
    if run_model is not model:
        log.info("training with a %s copy of the model's UNet, VAE and text encoder(s)", dtype)
    unet = run_model.pipe.unet
    shared = run_model is model
    undo = []
    try:
        if config.gradient_checkpointing and not unet.is_gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            undo.append(unet.disable_gradient_checkpointing)
        if config.channels_last:
            unet.to(memory_format=torch.channels_last)
            undo.append(lambda: unet.to(memory_format=torch.contiguous_format))
        if config.compile_unet:
            compiled = copy.copy(unet)  # shares weights and submodules; its forward alone is compiled
            compiled.compile()
            share_lock(compiled, unet)  # hypernetworks set on the shared UNet's attention reach it too
            run_model = replace(run_model, pipe=_pipeline_with(run_model.pipe, unet=compiled))
        yield run_model
    finally:
        if shared:
            for step in reversed(undo):
                step()
