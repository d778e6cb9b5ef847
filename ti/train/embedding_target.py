"""Training target: an embedding's vectors (textual inversion, a1111-compat.md §4).

The vectors are a float32 Parameter spliced into the prompt by PromptEncoder's token-embedding
hook, so gradients reach them through the frozen text encoder. AdamW without weight decay, as
A1111. Copies go to <log>/<date>/<name>/embeddings/<name>-<step>.pt (+ .optim), previews to
images/ and, with png_embedding, image embeddings to image_embeddings/.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ti.conditioning import PromptEncoder, SDXLPromptEncoder, effective_clip_skip
from ti.embedding import Embedding
from ti.errors import TrainingError
from ti.library import usable_embeddings
from ti.pipeline import LoadedModel
from ti.templates import NAME_PLACEHOLDER
from ti.train.checkpoint import load_resume_state, load_start_embedding, save_checkpoint
from ti.train.config import TrainConfig
from ti.train.logdir import LOSS_CSV_NAME, TrainLogDir
from ti.train.preview import snapshot_embedding, write_preview
from ti.train.target import ResumeInfo, TrainingTarget


class EmbeddingTarget(TrainingTarget):
    """Trains <embeddings_dir>/<config.name>.pt, resuming from the step it holds."""

    kind = "embedding"
    loss_csv_name = LOSS_CSV_NAME

    def __init__(self, model: LoadedModel, config: TrainConfig, embeddings_dir: Path):
        """Raises TrainingError: no such embedding, or the wrong width for the model."""
        self.model, self.config, self.name = model, config, config.name
        # SDXL embeddings live in .safetensors, whose header keeps the step a resume needs (an
        # SDXL .pt holds the two tensors only, for A1111's loader).
        self.suffix = ".safetensors" if model.is_sdxl else ".pt"
        self.path = Path(embeddings_dir) / f"{config.name}{self.suffix}"
        self.start = load_start_embedding(self.path, model.text_width)
        self.start_step = self.start.step or 0
        self.vectors = nn.Parameter(self.start.vectors.to(device=model.device, dtype=torch.float32).clone())
        self._freeze_other_half(config.train_encoders)
        # The other embeddings of the library work in prompts and previews as in generation; the
        # trained vectors stand for this name (not its file's old ones).
        library = usable_embeddings(config.embeddings_dir or embeddings_dir, model.text_width)
        self.library = {name: embedding for name, embedding in library.items() if name != config.name}
        vectors = {**{n: e.vectors for n, e in self.library.items()}, config.name: self.vectors}
        if model.is_sdxl:  # clip_l rows into te1, clip_g rows into te2 (both halves learn by default)
            # The half that does not train gives each prompt chunk the same output every step:
            # its encoder runs once per distinct chunk (SDXL's te2 is 5.6x te1's parameters).
            frozen = {"both": (), "clip_l": ("clip_g",), "clip_g": ("clip_l",)}[config.train_encoders]
            self.prompt_encoder = SDXLPromptEncoder(model.tokenizer, model.text_encoder, model.tokenizer_2,
                                                    model.text_encoder_2, vectors, frozen_encoders=frozen)
        else:
            self.prompt_encoder = PromptEncoder(model.tokenizer, model.text_encoder, vectors,
                                                clip_skip=effective_clip_skip(model, config.clip_skip)[0])

    def _freeze_other_half(self, train_encoders: str) -> None:
        """--train-encoders clip_l|clip_g: the other encoder's columns get no gradient. AdamW
        without weight decay then leaves them exactly as they started (zero moments, zero step)."""
        if train_encoders == "both":
            return
        if not self.model.is_sdxl:
            raise TrainingError(f"train_encoders {train_encoders!r} is for SDXL embeddings; {self.model.name} has one "
                                f"text encoder, so its embeddings train whole (train_encoders 'both')")
        width_l = self.model.text_encoder.get_input_embeddings().weight.shape[1]
        keep = torch.zeros(self.vectors.shape[1], device=self.vectors.device)
        if train_encoders == "clip_l":
            keep[:width_l] = 1
        else:
            keep[width_l:] = 1
        self.vectors.register_hook(lambda grad: grad * keep)

    def check(self, template_lines: list[str], template_path: Path) -> None:
        if not any(NAME_PLACEHOLDER in line for line in template_lines):
            raise TrainingError(f"template {template_path}: no line has {NAME_PLACEHOLDER}, so the prompts would "
                                f"never use the embedding; pick a template with {NAME_PLACEHOLDER} (style.txt, subject.txt, …)")

    def parameters(self) -> list[nn.Parameter]:
        return [self.vectors]

    def make_optimizer(self, learning_rate: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW([self.vectors], lr=learning_rate, weight_decay=0.0)

    def resume(self, optimizer: torch.optim.Optimizer, grad_scaler) -> ResumeInfo:
        state = load_resume_state(self.path, self.start)
        if state.optimizer_state is not None:
            optimizer.load_state_dict(state.optimizer_state)
            if grad_scaler is not None and state.grad_scaler_state:
                grad_scaler.load_state_dict(state.grad_scaler_state)
        return ResumeInfo(note=state.note, seed=state.seed)

    def offload_modules(self) -> list[nn.Module]:
        return [self.model.pipe.vae]  # the latents are cached; previews bring it back for decoding

    def encode(self, prompts: list[str]):
        return self.prompt_encoder.encode(prompts)[0]

    def check_gradients(self, step: int, first_prompt: str) -> None:
        if self.vectors.grad is None:
            raise TrainingError(f"step {step + 1}: no prompt of the batch used the embedding "
                                f"({first_prompt!r}); its name must appear as a word of its own")

    def snapshot(self, step: int) -> Embedding:
        return snapshot_embedding(f"{self.name}-{step}", self.vectors, step, self.model)

    def save_copy(self, snapshot: Embedding, log_dir: TrainLogDir, optimizer: torch.optim.Optimizer, seed: int,
                  grad_scaler_state: dict | None) -> Path:
        copy_path = log_dir.embedding_copy(snapshot.step).with_suffix(self.suffix)
        return save_checkpoint(snapshot, copy_path, optimizer, seed, grad_scaler_state)

    def write_preview(self, snapshot: Embedding, prompt: str, log_dir: TrainLogDir) -> Path:
        step = snapshot.step
        image_embedding = log_dir.image_embedding(step) if self.config.png_embedding else None
        return write_preview(self.model, self.name, snapshot, self.config, prompt, log_dir.preview(step),
                             image_embedding, self.library).preview

    def save_final(self, step: int, optimizer: torch.optim.Optimizer, seed: int, grad_scaler_state: dict | None) -> Path:
        embedding = replace(snapshot_embedding(self.name, self.vectors, step, self.model), sha256=None)
        return save_checkpoint(embedding, self.path, optimizer, seed, grad_scaler_state)

    def roll_back(self, step: int, optimizer: torch.optim.Optimizer, grad_scaler) -> tuple[int, str]:
        # The NaN is caught before the optimizer step, so the vectors are still those of `step`.
        return step, f"kept the vectors of step {step}"
