"""TrainConfig: every option of a training run, with A1111's defaults, validated.

HypernetworkTrainConfig is the same options with A1111's hypernetwork defaults (learning rate
0.00001, template hypernetwork.txt); one loop trains both (loop.py).

The UI and the CLI both build one of these; a run writes it beside its outputs as
`settings-<datetime>.json` (`to_json`), and `from_dict` reads such a file back.

Checks that need the file system (the dataset folder, the template) run here too, so a bad run
is refused before a model is touched. Every error is a ConfigError whose `field` is the name of
the dataclass field, so the UI can point at the widget.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ti.captions import filewords_from_filename
from ti.config import check_clip_skip
from ti.create import clean_embedding_name
from ti.errors import ConfigError, ScheduleSyntaxError, TIError
from ti.samplers import sampler_names
from ti.schedule import parse_schedule
from ti.templates import read_template, resolve_template
from ti.train.dataset import list_image_files

CLIP_GRAD_MODES = ("none", "value", "norm")
MIXED_PRECISION_MODES = ("auto", "no", "bf16", "fp16")
TRAIN_ENCODER_CHOICES = ("both", "clip_l", "clip_g")
LATENT_SAMPLING_METHODS = ("once", "deterministic", "random")
MAX_SIDE = 2048  # A1111's slider range for training width/height
MAX_SEED = 2**63 - 1


def option(default, help_text: str):
    """A dataclass field with a default and a help text (the UI shows it as the tooltip)."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """Options for training one embedding (a1111-compat.md §4), A1111's defaults.

    Intervals count optimizer steps (after gradient accumulation); 0 turns them off. Each
    field's help text is in its metadata (`TrainConfig.help_for("tag_dropout")`).
    """

    name: str = field(metadata={"help": "The embedding to train: <embeddings dir>/<name>.pt, created beforehand."})
    data_dir: Path = field(metadata={"help": "Folder of training images (subfolders are not used); "
                                             "a caption per image in <image name>.txt."})
    learning_rate: str = option("0.005", 'Learning rate, or a schedule: "0.005:100, 1e-3:1000, 1e-5" is 0.005 '
                                         "until step 100, 1e-3 until 1000, then 1e-5.")
    batch_size: int = option(1, "Images per micro-batch.")
    grad_accum: int = option(1, "Micro-batches whose gradients add up to one optimizer step.")
    clip_grad: str = option("none", "Gradient clipping: none, value (each element) or norm (the whole gradient).")
    clip_value: str = option("0.1", "The clipping limit; a schedule like the learning rate.")
    log_dir: str = option("textual_inversion", "Run outputs go to <log dir>/<date>/<name>/.")
    template: str = option("style_filewords.txt", "Prompt template: a file name in the templates folder, or a path.")
    templates_dir: str = option("textual_inversion_templates", "Folder of prompt templates.")
    width: int = option(512, "Training width; images go to aspect buckets of about width × height pixels.")
    height: int = option(512, "Training height (see width).")
    no_resize: bool = option(False, "Train on each image's own size, rounded down to multiples of 64.")
    max_steps: int = option(100000, "Stop at this optimizer step, counting the steps the embedding already has.")
    save_every: int = option(500, "Copy the embedding into the log folder every N steps (0: never).")
    preview_every: int = option(500, "Render a preview image every N steps (0: never).")
    png_embedding: bool = option(True, "With each preview, also save it as an image embedding.")
    preview_prompt: str = option("", "Preview prompt; empty: the first prompt of the latest training batch.")
    preview_negative_prompt: str = option("", "Preview negative prompt.")
    preview_sampler: str = option("Euler a", "Preview sampler.")
    preview_steps: int = option(20, "Preview sampling steps.")
    preview_cfg: float = option(7.0, "Preview CFG scale.")
    preview_seed: int = option(-1, "Preview seed; -1: a new random seed for every preview.")
    preview_width: int = option(0, "Preview width; 0: the training width.")
    preview_height: int = option(0, "Preview height; 0: the training height.")
    shuffle_tags: bool = option(False, "Shuffle the caption's comma-separated tags every time an image is used.")
    tag_dropout: float = option(0.0, "Chance (0 to 1) of leaving out each tag every time an image is used.")
    latent_sampling: str = option("once", "once: one VAE sample per image; deterministic: the VAE's mean; "
                                          "random: a new sample every time.")
    alpha_weight: bool = option(False, "Weigh the loss by the PNG alpha channel (transparent parts count less).")
    flip: bool = option(False, "Also train on mirrored copies of every image.")
    filewords_regex: str = option("", "For captions from file names: keep only the words this regular "
                                      "expression finds (empty: the whole name).")
    filewords_join: str = option(" ", "What goes between the words filewords_regex found.")
    seed: int = option(0, "Fixes the batch order, noise, timesteps, template lines and tag shuffles.")
    embeddings_dir: str = option("", "Embeddings the training prompts, captions and previews may use by name, as "
                                     "generation does: a folder. Empty: for an embedding run, the trained "
                                     "embedding's own folder; for a hypernetwork run, none.")
    clip_skip: int = option(1, "A1111's Clip skip for the training prompts and the previews: 1 = the text "
                               "encoder's last layer, 2 = the penultimate (what anime models are trained and "
                               "prompted with). Ignored on SD 2.x, as in A1111.")
    unload_vae: bool = option(False, "Keep the VAE on the CPU while training (saves VRAM; back for previews).")
    train_encoders: str = option("both", "SDXL: which half of the embedding trains: both, clip_l (the rows for text "
                                         "encoder 1) or clip_g (text encoder 2); the other half keeps the values it "
                                         "starts with. SD 1.x/2.x embeddings have one half: both.")
    # Speed and memory (speed.py); none of them changes what is trained, only how fast and in how much memory.
    mixed_precision: str = option("auto", "Precision of the frozen UNet, VAE and text encoder while training: auto "
                                          "= as the model was loaded (float32 on a CPU, fp16 on CUDA); no = float32; "
                                          "bf16 = bfloat16 (about 2x faster on CPUs with avx512_bf16/AMX and on "
                                          "recent GPUs); fp16 = float16 with loss scaling (CUDA). The trained "
                                          "tensors and the optimizer state stay float32.")
    gradient_checkpointing: bool = option(False, "Recompute the UNet's activations during the backward pass: much "
                                                 "less memory for large batches and images, about a third slower.")
    channels_last: bool = option(False, "Run the UNet's convolutions in channels-last memory layout (faster on "
                                        "GPUs with tensor cores; on CPUs measured no faster and, in bf16, ~500 MiB "
                                        "more memory; benchmarks/train_speed.py measures it).")
    compile_unet: bool = option(False, "torch.compile the UNet: the first steps take minutes, later ones are "
                                       "faster; for long runs.")
    extra: dict = field(default_factory=dict, metadata={"help": "free-form notes, saved in the settings JSON"})


    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        self._whole_floats_to_int()
        self._check_name()
        self._check_numbers()
        self._check_choices()
        self._check_schedules()
        self._check_text_options()
        self._check_dataset_folder()
        self._check_template()

    # --- checks, one concern each -------------------------------------------------------------

    def _whole_floats_to_int(self) -> None:
        """Number widgets hand over 5.0 for 5; take those as ints (5.5 is still refused)."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.type == "int" and isinstance(value, float) and math.isfinite(value) and value.is_integer():
                setattr(self, spec.name, int(value))

    def _check_name(self) -> None:
        cleaned = clean_embedding_name(self.name)  # raises ConfigError("name", ...)
        if cleaned != self.name:
            raise ConfigError("name", f"{self.name!r} has characters a file name should not; did you mean {cleaned!r}?")

    def _check_numbers(self) -> None:
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "max_steps": self.max_steps,
                    "preview_steps": self.preview_steps}
        for name, value in positive.items():
            _require_int(name, value)
            if value < 1:
                raise ConfigError(name, f"must be 1 or more, got {value}")
        for name in ("save_every", "preview_every"):
            value = getattr(self, name)
            _require_int(name, value)
            if value < 0:
                raise ConfigError(name, f"must be 0 (off) or more, got {value}")
        try:
            check_clip_skip(self.clip_skip)
        except ConfigError as error:
            raise ConfigError("clip_skip", str(error).split(": ", 1)[-1]) from None
        if self.preview_steps > 500:
            raise ConfigError("preview_steps", f"must be at most 500, got {self.preview_steps}")
        for name in ("width", "height"):
            value = getattr(self, name)
            _require_int(name, value)
            if not 64 <= value <= MAX_SIDE or value % 8:
                raise ConfigError(name, f"must be a multiple of 8 between 64 and {MAX_SIDE}, got {value}")
        for name in ("preview_width", "preview_height"):
            value = getattr(self, name)
            _require_int(name, value)
            if value != 0 and (not 64 <= value <= 4096 or value % 8):
                raise ConfigError(name, f"must be 0 (the training size) or a multiple of 8 between 64 and 4096, got {value}")
        if not (isinstance(self.tag_dropout, (int, float)) and 0.0 <= self.tag_dropout <= 1.0):
            raise ConfigError("tag_dropout", f"must be between 0 and 1, got {self.tag_dropout}")
        if not (isinstance(self.preview_cfg, (int, float)) and 0.0 <= self.preview_cfg <= 100.0):
            raise ConfigError("preview_cfg", f"must be between 0 and 100, got {self.preview_cfg}")
        _require_int("seed", self.seed)
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", f"must be between 0 and {MAX_SEED}, got {self.seed}")
        _require_int("preview_seed", self.preview_seed)
        if not -1 <= self.preview_seed < 2**32:
            raise ConfigError("preview_seed", f"must be -1 (random) or 0..4294967295, got {self.preview_seed}")

    def _check_choices(self) -> None:
        if self.clip_grad not in CLIP_GRAD_MODES:
            raise ConfigError("clip_grad", f"expected one of {', '.join(CLIP_GRAD_MODES)}, got {self.clip_grad!r}")
        if self.train_encoders not in TRAIN_ENCODER_CHOICES:
            raise ConfigError("train_encoders",
                              f"expected one of {', '.join(TRAIN_ENCODER_CHOICES)}, got {self.train_encoders!r}")
        if self.mixed_precision not in MIXED_PRECISION_MODES:
            raise ConfigError("mixed_precision",
                              f"expected one of {', '.join(MIXED_PRECISION_MODES)}, got {self.mixed_precision!r}")
        if self.latent_sampling not in LATENT_SAMPLING_METHODS:
            raise ConfigError("latent_sampling",
                              f"expected one of {', '.join(LATENT_SAMPLING_METHODS)}, got {self.latent_sampling!r}")
        if self.preview_sampler not in sampler_names():
            raise ConfigError("preview_sampler", f"unknown sampler {self.preview_sampler!r}; "
                                                 f"expected one of {', '.join(sampler_names())}")

    def _check_schedules(self) -> None:
        try:
            parse_schedule(self.learning_rate, self.max_steps, what="learning rate")
        except ScheduleSyntaxError as error:
            raise ConfigError("learning_rate", str(error)) from None
        if self.clip_grad != "none":
            try:
                parse_schedule(self.clip_value, self.max_steps, what="gradient clip value")
            except ScheduleSyntaxError as error:
                raise ConfigError("clip_value", str(error)) from None

    def _check_text_options(self) -> None:
        try:
            filewords_from_filename("probe.png", self.filewords_regex, self.filewords_join)
        except ConfigError as error:
            raise ConfigError("filewords_regex", str(error).split(": ", 1)[-1]) from None
        if (self.save_every or self.preview_every) and not str(self.log_dir).strip():
            raise ConfigError("log_dir", "is empty, but save_every or preview_every asks for files in it")

    def _check_dataset_folder(self) -> None:
        if not self.data_dir.is_dir():
            raise ConfigError("data_dir", f"{self.data_dir} does not exist or is not a folder")
        if not list_image_files(self.data_dir):
            raise ConfigError("data_dir", f"{self.data_dir} holds no image files (.png, .jpg, .webp, …); "
                                          f"images in subfolders are not used")

    def _check_template(self) -> None:
        try:
            read_template(self.template_path())
        except TIError as error:
            raise ConfigError("template", str(error)) from None

    @classmethod
    def help_for(cls, field_name: str) -> str:
        """The help text of a field, for tooltips and --help."""
        return next(spec.metadata.get("help", "") for spec in fields(cls) if spec.name == field_name)

    # --- derived values and persistence -------------------------------------------------------

    def template_path(self) -> Path:
        """The template file: a name found in templates_dir, or a path. Raises TIError."""
        return resolve_template(self.template, Path(self.templates_dir))

    def preview_size(self) -> tuple[int, int]:
        return (self.preview_width or self.width, self.preview_height or self.height)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["data_dir"] = str(self.data_dir)
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, values: dict, ignore_unknown: bool = False) -> "TrainConfig":
        """Build from a dict such as to_dict() gave; unknown keys are refused by name, or
        skipped with ignore_unknown (to read a run's settings-<datetime>.json, which also
        records what the run made of the options: model hash, buckets, …)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown and not ignore_unknown:
            raise ConfigError(unknown[0], f"is not a training option (known: {', '.join(sorted(known))})")
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class HypernetworkTrainConfig(TrainConfig):
    """Options for training a hypernetwork: TrainConfig's, with A1111's hypernetwork defaults.

    unload_vae keeps the VAE and the text encoder on the CPU (A1111 moves both for
    hypernetworks); png_embedding does not apply (there is no image form of a hypernetwork).
    """

    name: str = field(metadata={"help": "The hypernetwork to train: <hypernetwork dir>/<name>.pt, created beforehand."})
    learning_rate: str = option("0.00001", 'Learning rate, or a schedule ("1e-5:1000, 5e-6"). Hypernetworks '
                                           "diverge above about 1e-5; users go down to 5e-6…5e-7.")
    template: str = option("hypernetwork.txt", "Prompt template: a file name in the templates folder, or a path. "
                                               "[name] becomes the hypernetwork's name as plain text.")
    save_every: int = option(500, "Copy the hypernetwork to <hypernetwork dir>/<name>-<step>.pt every N steps (0: never).")
    png_embedding: bool = option(False, "Not used for hypernetworks.")
    unload_vae: bool = option(False, "Keep the VAE and the text encoder on the CPU while training (saves VRAM; "
                                     "prompts are encoded there, each once; both come back for previews).")

    def __post_init__(self):
        super().__post_init__()
        if self.compile_unet:
            # The hypernetwork's attention processors go on and off the shared UNet every step
            # (so generation elsewhere never sees them): a compiled graph would recompile each time.
            raise ConfigError("compile_unet", "is for embeddings; a hypernetwork run changes the UNet's attention "
                                              "every step, which a compiled UNet would recompile for")
        if self.train_encoders != "both":
            raise ConfigError("train_encoders", "is for SDXL embeddings; a hypernetwork acts on the UNet, not on "
                                                "either text encoder's rows")


def _require_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be a whole number, got {value!r}")
