"""What a training run reports while it runs (TrainHooks, TrainProgress) and when it ends (TrainResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ti.train.dataset import SkippedImage

STOP_FINISHED = "finished"  # the schedule ran out (normally: max steps reached)
STOP_INTERRUPTED = "interrupted"  # should_stop() said so; saved at a step boundary
STOP_NAN = "nan"  # the loss or a gradient was NaN/inf; the last good vectors were saved


@dataclass
class TrainProgress:
    """A snapshot after each optimizer step."""

    step: int  # optimizer steps done (what the embedding file will say)
    max_steps: int  # where this run ends (max_steps, or earlier if the LR schedule ends earlier)
    loss: float  # this step's loss (mean over its micro-batches)
    learning_rate: float
    epoch: int  # 0-based epoch this step belonged to
    epoch_step: int  # 1-based step within that epoch
    seconds_per_step: float  # recent average, previews and saves left out
    preview_path: Path | None  # the latest preview image, if any yet
    loss_history: list[tuple[int, float]]  # (step, loss) of every step of this run; append-only, do not mutate


@dataclass
class TrainHooks:
    """Optional callbacks. They run on the training thread, between steps: keep them quick.

    on_progress: after every optimizer step.
    should_stop: polled before every step; True stops the run at that step boundary, saved and
        resumable.
    on_status: one line about the preparation phases ("encoding images 3/20") and saves.
    """

    on_progress: Callable[[TrainProgress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_status: Callable[[str], None] | None = None

    def status(self, text: str) -> None:
        if self.on_status:
            self.on_status(text)

    def stop_requested(self) -> bool:
        return bool(self.should_stop and self.should_stop())


@dataclass
class TrainResult:
    """How a run ended."""

    step: int  # optimizer steps done, as saved in `path`
    path: Path  # embeddings_dir/<name>.pt
    stop_reason: str  # "finished" | "interrupted" | "nan"
    message: str  # one or two sentences for the user
    log_dir: Path | None  # <log_dir>/<date>/<name>; None when the run returned before starting
    skipped_images: list[SkippedImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things worth telling (batch size clamped, fresh optimizer, …)
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    last_preview: Path | None = None
    start_step: int = 0
