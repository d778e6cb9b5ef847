"""Training target: a hypernetwork (a1111-compat.md §8).

- What trains: every parameter of the hypernetwork (float32), AdamW with torch's default weight
  decay 0.01, as A1111. The text encoder is frozen and no embedding is spliced in: `[name]` in
  a template is just the hypernetwork's name as text.
- The UNet forward: for each optimizer step, the hypernetwork's attention processors are set on
  the shared UNet under module_lock(unet) and taken off after the step's backward passes, so a
  generation in another thread never sees them. During the step the hypernetwork is in train
  mode (dropout on, strength counts as 1); previews run it in eval mode. Dropout draws from a
  generator seeded by (seed, step), so a resumed run equals an uninterrupted one with dropout too.
- Conditioning: the text encoder(s) are frozen, so each distinct 77-token chunk is encoded once
  and kept (ChunkOutputCache). Unload: the VAE and the text encoder stay on the CPU; chunks are
  encoded there and the conditioning moved to the device.
- Files: copies every save_every steps at <hypernetwork dir>/<name>-<step>.pt (A1111's place;
  stored name `<name>-<step>`), the final save at <hypernetwork dir>/<name>.pt, each stamped with
  step and checkpoint, each with A1111's `.optim` beside it (checkpoint.py).
- NaN: the weights and optimizer state roll back to the last good copy of this run (or the
  start file when there is none), which is then saved as <name>.pt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ti.conditioning import ChunkOutputCache, PromptEncoder, SDXLPromptEncoder, effective_clip_skip
from ti.config import GenerateConfig
from ti.errors import BadEmbeddingFile, ConfigError, TrainingError
from ti.generate import save_png_with_infotext, txt2img
from ti.hypernetwork import Hypernetwork, apply_hypernetworks, attention_widths, load_hypernetwork_file, parse_hypernet_tags
from ti.library import usable_embeddings
from ti.locks import module_lock
from ti.pipeline import LoadedModel
from ti.train.checkpoint import load_hypernetwork_resume_state, optimizer_path, save_hypernetwork_checkpoint
from ti.train.config import TrainConfig
from ti.train.logdir import HYPERNETWORK_LOSS_CSV_NAME, TrainLogDir
from ti.train.seeds import derive_seed
from ti.train.target import ResumeInfo, TrainingTarget

WEIGHT_DECAY = 0.01  # torch's AdamW default, which A1111 trains hypernetworks with
STRENGTH_WHILE_TRAINING = 1.0  # counts only in eval mode anyway


class HypernetworkTarget(TrainingTarget):
    """Trains <hypernetwork_dir>/<config.name>.pt, resuming from the step it holds."""

    kind = "hypernetwork"
    loss_csv_name = HYPERNETWORK_LOSS_CSV_NAME

    def __init__(self, model: LoadedModel, config: TrainConfig, hypernetwork_dir: Path):
        """Raises TrainingError: no such hypernetwork, or a file that cannot be used."""
        self.model, self.config, self.name = model, config, config.name
        self.folder = Path(hypernetwork_dir)
        self.path = self.folder / f"{config.name}.pt"
        self.hypernetwork = _load_start(self.path)
        self.hypernetwork.name = config.name
        self.hypernetwork.to(device=model.device)
        self.start_step = self.hypernetwork.step
        self.last_good: tuple[int, Path] = (self.start_step, self.path)  # where roll_back goes
        # Embeddings of a library folder work in the training prompts and previews, by name.
        self.library = usable_embeddings(config.embeddings_dir, model.text_width)
        vectors = {n: e.vectors for n, e in self.library.items()}
        if model.is_sdxl:
            # Nothing trains either encoder: each distinct prompt chunk goes through each once.
            self.prompt_encoder = SDXLPromptEncoder(model.tokenizer, model.text_encoder, model.tokenizer_2,
                                                    model.text_encoder_2, vectors, frozen_encoders=("clip_l", "clip_g"))
        else:
            self.prompt_encoder = PromptEncoder(model.tokenizer, model.text_encoder, vectors,
                                                clip_skip=effective_clip_skip(model, config.clip_skip)[0],
                                                output_cache=ChunkOutputCache())
        self.has_dropout = any(isinstance(module, nn.Dropout) for module in self.hypernetwork.modules())
        # (SDXL: its two encoders stay where they are; "unload" parks the VAE only.)
        self._encode_on_cpu = bool(config.unload_vae) and not model.is_sdxl

    def check(self, template_lines: list[str], template_path: Path) -> None:
        widths = attention_widths(self.model.pipe.unet)
        if not set(self.hypernetwork.sizes) & set(widths):
            raise TrainingError(
                f"{self.path}: its modules are for widths {', '.join(map(str, self.hypernetwork.sizes))}, but this "
                f"model's attention layers take {', '.join(map(str, widths))}, so it would change nothing; create one "
                f"for this model: python -m ti create-hypernetwork NAME --sizes {','.join(map(str, widths))}")

    def parameters(self) -> list[nn.Parameter]:
        return list(self.hypernetwork.parameters())

    def make_optimizer(self, learning_rate: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, weight_decay=WEIGHT_DECAY)

    def resume(self, optimizer: torch.optim.Optimizer, grad_scaler) -> ResumeInfo:
        return _load_optimizer_state(self.path, self.hypernetwork, optimizer, grad_scaler)

    def offload_modules(self) -> list[nn.Module]:
        if self.model.is_sdxl:
            return [self.model.pipe.vae]
        return [self.model.pipe.vae, self.model.pipe.text_encoder]

    def encode(self, prompts: list[str]):
        """Conditioning without gradients: the text encoder is frozen and nothing trains in it,
        so each distinct prompt chunk goes through it once (the prompt encoder's output cache)."""
        with torch.no_grad():
            encoded = self.prompt_encoder.encode(prompts)[0]
        return encoded.to(self.model.device) if self._encode_on_cpu else encoded

    @contextmanager
    def step_context(self, step: int) -> Iterator[None]:
        """The hypernetwork on the shared UNet (under its lock) and in train mode, for one step."""
        unet = self.model.pipe.unet
        with module_lock(unet), apply_hypernetworks(unet, [(self.hypernetwork, STRENGTH_WHILE_TRAINING)]), \
                _seeded_dropout(self.has_dropout, derive_seed(self.config.seed, "dropout", step), self.model.device):
            self.hypernetwork.train()
            try:
                yield
            finally:
                self.hypernetwork.eval()

    def check_gradients(self, step: int, first_prompt: str) -> None:
        if all(parameter.grad is None for parameter in self.parameters()):
            raise TrainingError(f"step {step + 1}: the hypernetwork got no gradient; it fires at no attention layer")

    def snapshot(self, step: int) -> int:
        return step  # previews use the live hypernetwork (nothing changes it while they run)

    def copy_path(self, step: int) -> Path:
        return self.folder / f"{self.name}-{step}.pt"

    def save_copy(self, snapshot: int, log_dir: TrainLogDir, optimizer: torch.optim.Optimizer, seed: int,
                  grad_scaler_state: dict | None) -> Path:
        path = self._save(self.copy_path(snapshot), f"{self.name}-{snapshot}", snapshot, optimizer, seed, grad_scaler_state)
        self.last_good = (snapshot, path)
        return path

    def write_preview(self, snapshot: int, prompt: str, log_dir: TrainLogDir) -> Path:
        config = self.config
        width, height = config.preview_size()
        tagged = f"{parse_hypernet_tags(prompt)[0].strip()} <hypernet:{self.name}:{STRENGTH_WHILE_TRAINING:g}>".strip()
        generate_config = GenerateConfig(prompt=tagged, negative_prompt=parse_hypernet_tags(config.preview_negative_prompt)[0],
                                         steps=config.preview_steps, sampler=config.preview_sampler,
                                         cfg_scale=config.preview_cfg, seed=config.preview_seed, width=width, height=height,
                                         clip_skip=config.clip_skip)
        self.hypernetwork.eval()
        generated = txt2img(self.model, self.library, generate_config,
                            hypernetworks=_JustThis(self.hypernetwork)).images[0]
        return save_png_with_infotext(generated.image, generated.infotext, log_dir.preview(snapshot))

    def save_final(self, step: int, optimizer: torch.optim.Optimizer, seed: int, grad_scaler_state: dict | None) -> Path:
        return self._save(self.path, self.name, step, optimizer, seed, grad_scaler_state)

    def roll_back(self, step: int, optimizer: torch.optim.Optimizer, grad_scaler) -> tuple[int, str]:
        good_step, good_path = self.last_good
        try:
            restored = load_hypernetwork_file(good_path)
        except BadEmbeddingFile as error:
            raise TrainingError(f"the loss became NaN/inf, and the last good copy cannot be read back ({error})") from None
        self.hypernetwork.load_state_dict(restored.state_dict())
        self.hypernetwork.step = good_step
        optimizer.state.clear()
        resumed = _load_optimizer_state(good_path, restored, optimizer, grad_scaler)
        state_note = "" if resumed.note is None else " (its optimizer state could not be used: it starts fresh)"
        where = "the start file" if good_path == self.path else "the last good copy"
        return good_step, f"rolled back to {where}, {good_path.name} at step {good_step}{state_note}"

    def settings(self) -> dict:
        structure = self.hypernetwork.structure
        return {
            "hypernetwork_name": self.name,
            "hypernetwork_sizes": self.hypernetwork.sizes,
            "layer_structure": list(structure.layer_structure),
            "activation_func": structure.activation,
            "weight_initialization": structure.weight_init,
            "is_layer_norm": structure.layer_norm,
            "use_dropout": structure.use_dropout,
            "dropout_structure": list(structure.dropout_structure),
            "start_sha256": self.hypernetwork.sha256,
            "weight_decay": WEIGHT_DECAY,
            "unload_moves": ["vae", "text_encoder"] if self.config.unload_vae else [],
        }

    def _save(self, path: Path, stored_name: str, step: int, optimizer: torch.optim.Optimizer, seed: int,
              grad_scaler_state: dict | None) -> Path:
        """Save the live hypernetwork with `stored_name` and `step`, stamped with this model."""
        hypernetwork = self.hypernetwork
        hypernetwork.step = step
        hypernetwork.checkpoint_hash = self.model.short_hash
        hypernetwork.checkpoint_name = self.model.name.replace("/", "_").replace("\\", "_")
        hypernetwork.name = stored_name
        try:
            return save_hypernetwork_checkpoint(hypernetwork, path, optimizer, seed, grad_scaler_state)
        finally:
            hypernetwork.name = self.name


class _JustThis:
    """Stands in for a HypernetworkLibrary in previews: the tag names the hypernetwork being trained."""

    def __init__(self, hypernetwork: Hypernetwork):
        self.hypernetwork = hypernetwork

    def resolve(self, requested: Sequence[tuple[str, float]]) -> list[tuple[Hypernetwork, float]]:
        for name, _ in requested:
            if name != self.hypernetwork.name:
                raise ConfigError("preview prompt", f"names hypernetwork {name!r}; previews use only {self.hypernetwork.name!r}")
        return [(self.hypernetwork, float(strength)) for _, strength in requested]


def _load_start(path: Path) -> Hypernetwork:
    if not path.is_file():
        raise TrainingError(f"{path}: no such hypernetwork; create it first: python -m ti create-hypernetwork "
                            f"{path.stem!r} (or in the Hypernetworks tab)")
    try:
        return load_hypernetwork_file(path)
    except BadEmbeddingFile as error:
        raise TrainingError(f"cannot train {path.name}: {error}") from None


def _load_optimizer_state(path: Path, hypernetwork: Hypernetwork, optimizer: torch.optim.Optimizer,
                          grad_scaler) -> ResumeInfo:
    """Load the .optim beside `path` into optimizer (and grad_scaler) when it belongs to that file."""
    state = load_hypernetwork_resume_state(path, hypernetwork)
    if state.optimizer_state is None:
        return ResumeInfo(note=state.note, seed=state.seed)
    try:
        optimizer.load_state_dict(state.optimizer_state)
    except (ValueError, KeyError) as error:  # other parameter count or shapes
        optimizer.state.clear()
        return ResumeInfo(note=f"{optimizer_path(path).name} does not fit this hypernetwork ({error}); "
                               f"the optimizer state starts fresh")
    if grad_scaler is not None and state.grad_scaler_state:
        grad_scaler.load_state_dict(state.grad_scaler_state)
    return ResumeInfo(note=None, seed=state.seed)


@contextmanager
def _seeded_dropout(enabled: bool, seed: int, device: torch.device) -> Iterator[None]:
    """Dropout draws from torch's global generator: seed it for this step, and put back the state
    it had afterwards, so training neither depends on nor disturbs anyone else's draws."""
    if not enabled:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield
