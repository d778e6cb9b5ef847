"""Option sets as dataclasses, validated on construction. The UI and the CLI both build these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ti.errors import ConfigError
from ti.samplers import SCHEDULE_TYPES

PRECISIONS = ("full", "half", "bf16")
MAX_CLIP_SKIP = 12  # A1111's slider; SD1's text encoder has 12 layers


def check_clip_skip(clip_skip: int) -> None:
    """Raises ConfigError("Clip skip") unless clip_skip is a whole number from 1 to 12."""
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= MAX_CLIP_SKIP:
        raise ConfigError("Clip skip", f"must be a whole number from 1 to {MAX_CLIP_SKIP}, got {clip_skip!r}")


@dataclass
class ModelConfig:
    """Which model to load and where it runs."""

    model: str = "demo"  # diffusers folder, .safetensors/.ckpt, hub id, or "demo"
    model_config: str | None = None  # local diffusers folder with configs for a single-file checkpoint
    device: str | None = None  # None: cuda when present, else cpu
    precision: str | None = None  # None: half on CUDA, full on CPU

    def __post_init__(self):
        if not self.model or not str(self.model).strip():
            raise ConfigError("model", "is empty")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError("precision", f"expected one of {PRECISIONS}, got {self.precision!r}")


@dataclass
class GenerateConfig:
    """One txt2img request, with A1111's defaults."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "Euler a"
    schedule_type: str = "Automatic"  # A1111's: Automatic (the sampler's own choice), Uniform, Karras, Exponential
    cfg_scale: float = 7.0
    seed: int = -1  # -1: random
    width: int = 512
    height: int = 512
    batch_count: int = 1
    batch_size: int = 1
    clip_skip: int = 1  # A1111's "Clip skip": 1 = the last layer, 2 = the penultimate (anime models)
    extra_params: dict = field(default_factory=dict)

    def __post_init__(self):
        if not 1 <= int(self.steps) <= 500:
            raise ConfigError("steps", f"must be between 1 and 500, got {self.steps}")
        if self.cfg_scale < 0 or self.cfg_scale > 100:
            raise ConfigError("CFG scale", f"must be between 0 and 100, got {self.cfg_scale}")
        for name, value in (("width", self.width), ("height", self.height)):
            if value < 64 or value > 4096 or value % 8:
                raise ConfigError(name, f"must be a multiple of 8 between 64 and 4096, got {value}")
        if not 1 <= self.batch_count <= 100:
            raise ConfigError("batch count", f"must be between 1 and 100, got {self.batch_count}")
        if not 1 <= self.batch_size <= 64:
            raise ConfigError("batch size", f"must be between 1 and 64, got {self.batch_size}")
        check_clip_skip(self.clip_skip)
        if self.schedule_type not in SCHEDULE_TYPES:
            raise ConfigError("schedule type", f"unknown {self.schedule_type!r}; choose one of: {', '.join(SCHEDULE_TYPES)}")
        if self.seed < -1 or self.seed >= 2**32:
            raise ConfigError("seed", f"must be -1 (random) or 0..4294967295, got {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)
