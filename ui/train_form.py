"""Pure mapping from a training form's widget values to a TrainConfig, and progress text.

One form serves both training tabs: TrainForm says what differs (the config class, defaults,
labels, the job kind), EMBEDDING_FORM and HYPERNETWORK_FORM are the two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ti.train import HypernetworkTrainConfig, TrainConfig
from ui.folders import folder_inside

# Widget labels by TrainConfig field, so an error names what the user sees.
FIELD_LABELS = {
    "name": "Embedding", "data_dir": "Dataset directory", "learning_rate": "Embedding learning rate",
    "batch_size": "Batch size", "grad_accum": "Gradient accumulation steps", "clip_grad": "Gradient clipping",
    "clip_value": "Clip value", "log_dir": "Log directory", "template": "Prompt template", "width": "Width",
    "height": "Height", "max_steps": "Max steps", "save_every": "Save an embedding copy every N steps",
    "preview_every": "Save an image every N steps", "preview_prompt": "Preview prompt", "tag_dropout": "Drop out tags",
    "filewords_regex": "Filename word regex", "seed": "Seed", "preview_seed": "Preview seed",
    "preview_steps": "Preview steps", "preview_cfg": "Preview CFG scale", "clip_skip": "Clip skip",
    "train_encoders": "Train text encoders (SDXL)",
    "unload_vae": "Move the VAE to the CPU while training (saves VRAM)",
    "mixed_precision": "Mixed precision", "gradient_checkpointing": "Gradient checkpointing (saves VRAM)",
    "channels_last": "Channels-last memory layout", "compile_unet": "Compile the UNet (torch.compile)",
}

# The Mixed precision dropdown: (what the page shows, TrainConfig.mixed_precision). "no" reads as
# "float32" to a user; "auto" is whatever precision the model bar loaded the model in.
MIXED_PRECISION_CHOICES = [("auto (as loaded)", "auto"), ("float32", "no"), ("bf16", "bf16"), ("fp16", "fp16")]
MIXED_PRECISION_INFO = (
    "Precision of the frozen UNet, VAE and text encoder during the run; what is trained (the embedding or "
    "the hypernetwork) and the optimizer stay float32. auto: as the model is loaded (float32 on a CPU, fp16 "
    "on CUDA). bf16: about 2x faster on CPUs with AMX/avx512_bf16 and on recent GPUs. fp16: CUDA only, with "
    "loss scaling. A precision other than the loaded one trains on a converted copy of the model (more "
    "memory while training); generation in the other tabs is unaffected.")


@dataclass(frozen=True)
class TrainForm:
    """What one training tab trains, and how its form differs from the other's."""

    job_kind: str  # services.jobs kind of its runs
    config_class: type = TrainConfig
    learning_rate: str = "0.005"
    template: str = "style_filewords.txt"
    has_png_embedding: bool = True
    has_compile_unet: bool = True  # HypernetworkTrainConfig refuses compile_unet
    has_train_encoders: bool = True  # and train_encoders (a hypernetwork has no encoder rows)
    labels: dict = field(default_factory=lambda: dict(FIELD_LABELS))

    def label(self, field_name: str) -> str:
        return self.labels.get(field_name, field_name)


EMBEDDING_FORM = TrainForm(job_kind="train-embedding")
HYPERNETWORK_FORM = TrainForm(
    job_kind="train-hypernetwork", config_class=HypernetworkTrainConfig, learning_rate="0.00001",
    template="hypernetwork.txt", has_png_embedding=False, has_compile_unet=False, has_train_encoders=False,
    labels={**FIELD_LABELS, "name": "Hypernetwork", "learning_rate": "Hypernetwork learning rate",
            "save_every": "Save a copy of the hypernetwork every N steps",
            "unload_vae": "Move the VAE and the text encoder to the CPU while training (saves VRAM; "
                          "no change on a CPU-only machine)"},
)


def _int(value, default=0):
    return default if value is None or value == "" else int(value)


def mixed_precision_value(choice: str | None) -> str:
    """The Mixed precision dropdown's value -> TrainConfig.mixed_precision. The dropdown sends the
    config value; a label ("float32", as an API client may send) is taken too; empty means auto.
    Anything else goes through unchanged for TrainConfig to refuse by name."""
    if choice is None or choice == "":
        return "auto"
    by_label = {label: value for label, value in MIXED_PRECISION_CHOICES}
    return by_label.get(choice, choice)


def log_dir_inside(text: str, log_root: Path) -> str:
    """The Log directory box, kept inside the app's --log-dir: the page (or an API client of a
    --listen server) must not make training write anywhere else. Relative paths count from
    log_root's parent, so the default value (the --log-dir itself) works as is.

    Raises:
        ConfigError("log_dir"): a path outside log_root.
    """
    from ti.errors import ConfigError

    root = Path(log_root).resolve()
    typed = Path((text or "").strip() or str(log_root))
    candidate = (typed if typed.is_absolute() else Path(log_root).parent / typed).resolve()
    if candidate != root and root not in candidate.parents:
        raise ConfigError("log_dir", f"{text!r} is outside the log folder {log_root}; use it or a folder inside it")
    return str(candidate)


def build_train_config(values: dict, templates_dir: Path, form: TrainForm = EMBEDDING_FORM,
                       log_root: Path | None = None, data_root: Path | None = None) -> TrainConfig:
    """values: widget values keyed by TrainConfig field name -> form.config_class.

    log_root: when given, the log directory must lie inside it (log_dir_inside).
    data_root: when given (an open --listen server), the dataset folder must lie inside it, and
        the template must be one of templates_dir's by name (not a path to any file).
    Raises:
        ConfigError: field = the widget's label.
    """
    from ti.errors import ConfigError

    try:
        if log_root is not None:
            values = {**values, "log_dir": log_dir_inside(values.get("log_dir") or "", log_root)}
        if data_root is not None and any(sep in (values.get("template") or "") for sep in ("/", "\\")):
            raise ConfigError("template", "pick a template from the list (this open server takes no file paths)")
        return form.config_class(
            name=(values.get("name") or "").strip(),
            data_dir=folder_inside(values.get("data_dir") or "", data_root, "data_dir"),
            learning_rate=values.get("learning_rate") or "",
            batch_size=_int(values.get("batch_size"), 1),
            grad_accum=_int(values.get("grad_accum"), 1),
            clip_grad=values.get("clip_grad") or "none",
            clip_value=values.get("clip_value") or "0.1",
            log_dir=values.get("log_dir") or "",
            template=values.get("template") or "",
            templates_dir=str(templates_dir),
            width=_int(values.get("width"), 512),
            height=_int(values.get("height"), 512),
            no_resize=bool(values.get("no_resize")),
            max_steps=_int(values.get("max_steps"), 100000),
            save_every=_int(values.get("save_every")),
            preview_every=_int(values.get("preview_every")),
            png_embedding=bool(values.get("png_embedding")),
            preview_prompt=values.get("preview_prompt") or "",
            preview_negative_prompt=values.get("preview_negative_prompt") or "",
            preview_sampler=values.get("preview_sampler") or "Euler a",
            preview_steps=_int(values.get("preview_steps"), 20),
            preview_cfg=float(values.get("preview_cfg") or 7.0),
            preview_seed=_int(values.get("preview_seed"), -1),
            shuffle_tags=bool(values.get("shuffle_tags")),
            tag_dropout=float(values.get("tag_dropout") or 0.0),
            latent_sampling=values.get("latent_sampling") or "once",
            alpha_weight=bool(values.get("alpha_weight")),
            flip=bool(values.get("flip")),
            filewords_regex=values.get("filewords_regex") or "",
            filewords_join=values.get("filewords_join") if values.get("filewords_join") is not None else " ",
            seed=_int(values.get("seed")),
            clip_skip=_int(values.get("clip_skip"), 1),
            train_encoders=values.get("train_encoders") or "both",
            embeddings_dir=str(values.get("embeddings_dir") or ""),
            unload_vae=bool(values.get("unload_vae")),
            mixed_precision=mixed_precision_value(values.get("mixed_precision")),
            gradient_checkpointing=bool(values.get("gradient_checkpointing")),
            channels_last=bool(values.get("channels_last")),
            # Passed on even for the hypernetwork form (which has no such box), so an API call
            # asking for it is refused by name instead of quietly ignored.
            compile_unet=bool(values.get("compile_unet")),
        )
    except ConfigError as error:
        label = form.label(error.field)
        message = str(error).split(": ", 1)[-1]
        raise ConfigError(label, message) from None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(snapshot, job_kind: str | None = None) -> str:
    """One status block from a JobSnapshot of a training job (of job_kind, when given)."""
    if not snapshot.kind.startswith("train") or (job_kind is not None and snapshot.kind != job_kind):
        return "Not training."
    details = snapshot.details
    if snapshot.running:
        head = f"**{snapshot.title}**: step {snapshot.step}/{snapshot.total}"
        parts = [head]
        if "loss" in details:
            parts.append(f"loss {details['loss']:.6f}")
        if "learning_rate" in details:
            parts.append(f"lr {details['learning_rate']:g}")
        eta = snapshot.eta_seconds
        if eta is not None:
            parts.append(f"time left ≈ {format_duration(eta)}")
        text = " · ".join(parts)
        if snapshot.message:
            text += f"\n\n{snapshot.message}"
        return text
    if snapshot.error:
        return f"**{snapshot.title}** stopped with an error: {snapshot.error}"
    result = snapshot.result
    if result is None:
        return f"**{snapshot.title}** ended."
    elapsed = format_duration((snapshot.finished_at or time.time()) - snapshot.started_at)
    lines = [f"**{snapshot.title}** {result.stop_reason} at step {result.step} ({elapsed}). {result.message}"]
    lines += [f"- {note}" for note in result.notes]
    if result.skipped_images:
        lines.append(f"Skipped {len(result.skipped_images)} image(s):")
        lines += [f"- `{s.path.name}`: {s.reason}" for s in result.skipped_images]
    if result.log_dir:
        lines.append(f"Log folder: `{result.log_dir}`")
    return "\n".join(lines)
