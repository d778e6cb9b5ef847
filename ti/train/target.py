"""What a training run trains: the part of a run the loop (loop.py) leaves to its target.

One loop serves embeddings and hypernetworks (design.md §4). The loop owns everything they share:
the latent cache, batches, noise and timesteps, the loss, the learning-rate and clip schedules,
gradient accumulation, the NaN check, the loss CSV, progress, stop checks, and when to save and
preview. A TrainingTarget answers the rest:

    path, start_step, loss_csv_name     the final file, the step it holds, the CSV's name
    check(template_lines, path)         refuse a run that cannot train it (before any encoding)
    parameters(), make_optimizer(lr)    which float32 Parameters train, and how
    resume(optimizer, grad_scaler)      load the optimizer state saved beside the file, if it fits
    offload_modules()                   what unload moves to the CPU while training
    encode(prompts)                     the micro-batch's conditioning (gradients or not)
    step_context(step)                  wraps the UNet forward/backward of one optimizer step
    check_gradients(step, prompt)       after backward: refuse a step no parameter learned from
    snapshot(step) / save_copy / write_preview / save_final
    roll_back(step, optimizer, scaler)  after a NaN: restore the last good state, say which
    settings()                          extra fields for settings-<datetime>.json

EmbeddingTarget (embedding_target.py) and HypernetworkTarget (hypernetwork_target.py) are the two.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ti.train.logdir import TrainLogDir


@dataclass
class ResumeInfo:
    """What resume() found beside the file."""

    note: str | None = None  # why the optimizer state was not used, when it was not
    seed: int | None = None  # the seed the saved state was trained with, if recorded


class TrainingTarget(ABC):
    """The thing a run trains. Subclasses set the attributes in __init__ (which loads the file)."""

    kind: str  # "embedding" | "hypernetwork", for messages
    name: str  # the run's name (config.name)
    path: Path  # the final file: <folder>/<name>.pt
    start_step: int  # the step the file holds
    loss_csv_name: str  # A1111's name for the log folder's loss CSV

    def check(self, template_lines: list[str], template_path: Path) -> None:
        """Raise TrainingError when this run cannot train the target (the default: it can)."""

    @abstractmethod
    def parameters(self) -> list[nn.Parameter]:
        """The trained tensors, float32, on the model's device."""

    @abstractmethod
    def make_optimizer(self, learning_rate: float) -> torch.optim.Optimizer:
        """A fresh optimizer over parameters()."""

    @abstractmethod
    def resume(self, optimizer: torch.optim.Optimizer, grad_scaler) -> ResumeInfo:
        """Load the optimizer (and grad scaler) state saved with the start file, if it belongs to it."""

    def offload_modules(self) -> list[nn.Module]:
        """The modules the unload option keeps on the CPU while training (previews bring them back)."""
        return []

    @abstractmethod
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Conditioning [B, 77·k, C] for a micro-batch's prompts, on the model's device."""

    def step_context(self, step: int) -> AbstractContextManager:
        """Entered around the forward and backward passes of optimizer step `step` (0-based)."""
        return nullcontext()

    def check_gradients(self, step: int, first_prompt: str) -> None:
        """Called after a step's backward passes; raise TrainingError if nothing could learn."""

    @abstractmethod
    def snapshot(self, step: int) -> object:
        """The state at `step` for save_copy and write_preview (opaque to the loop)."""

    @abstractmethod
    def save_copy(self, snapshot: object, log_dir: TrainLogDir, optimizer: torch.optim.Optimizer, seed: int,
                  grad_scaler_state: dict | None) -> Path:
        """Save the intermediate copy of this step (and its optimizer state); returns its path."""

    @abstractmethod
    def write_preview(self, snapshot: object, prompt: str, log_dir: TrainLogDir) -> Path:
        """Render and save the preview of this step; returns the image's path."""

    @abstractmethod
    def save_final(self, step: int, optimizer: torch.optim.Optimizer, seed: int, grad_scaler_state: dict | None) -> Path:
        """Write `path` (and its optimizer state) with the state reached at `step`."""

    @abstractmethod
    def roll_back(self, step: int, optimizer: torch.optim.Optimizer, grad_scaler) -> tuple[int, str]:
        """After a NaN/inf at step+1 (parameters still those of `step`): restore the last good state.

        Returns:
            (the step now held, what was kept, e.g. "kept the vectors of step 4").
        """

    def settings(self) -> dict:
        """Extra fields for the run's settings JSON."""
        return {}

    def finish(self) -> None:
        """Called once when the run ends, however it ends."""
