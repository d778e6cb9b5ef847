"""Load a Stable Diffusion pipeline (folder, single file, hub id or the demo); model hash and family."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ti.checkpoint_kind import read_checkpoint_kind
from ti.config import ModelConfig
from ti.embedding import model_family_for_width
from ti.errors import ModelLoadError
from ti.hashes import HashCache, legacy_model_hash

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_DTYPES = {"full": torch.float32, "half": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A ready pipeline and what the UI, infotext and embedding files say about it."""

    pipe: object  # diffusers StableDiffusionPipeline
    name: str  # checkpoint stem (A1111's sd_checkpoint_name), "demo" for the demo
    source: str  # what --model said
    sha256: str
    device: torch.device
    dtype: torch.dtype
    is_demo: bool = False
    legacy_hash: str | None = None

    @property
    def short_hash(self) -> str:
        """A1111's `Model hash`: first 10 hex digits of the checkpoint's sha256."""
        return self.sha256[:10]

    @property
    def is_sdxl(self) -> bool:
        return getattr(self.pipe, "text_encoder_2", None) is not None

    @property
    def text_width(self) -> int:
        """Width of the token embeddings: what an embedding must match (SDXL: clip_l + clip_g)."""
        width = int(self.pipe.text_encoder.get_input_embeddings().weight.shape[1])
        if self.is_sdxl:
            width += int(self.pipe.text_encoder_2.get_input_embeddings().weight.shape[1])
        return width

    @property
    def native_size(self) -> int:
        """The side, in pixels, the UNet was made for (its sample_size times the VAE's 8x): 512 for
        SD 1.x, 1024 for SDXL; what diffusers' pipelines generate when no size is given."""
        vae_scale = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        return int(self.pipe.unet.config.sample_size) * vae_scale

    @property
    def family(self) -> str:
        return model_family_for_width(self.text_width)

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def tokenizer_2(self):
        return getattr(self.pipe, "tokenizer_2", None)

    @property
    def text_encoder_2(self):
        return getattr(self.pipe, "text_encoder_2", None)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"--device {requested}: CUDA is not available on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(precision: str | None, device: torch.device) -> torch.dtype:
    """float32 on CPU (safest); half on CUDA unless told otherwise."""
    if precision is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[precision]


def find_checkpoints(models_dir: Path) -> list[Path]:
    """Checkpoint files and diffusers folders under models/Stable-diffusion, sorted by name."""
    if not models_dir.is_dir():
        return []
    found = [p for p in models_dir.rglob("*") if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES]
    found += [p.parent for p in models_dir.rglob("model_index.json")]
    return sorted(set(found), key=lambda p: str(p).lower())


def default_model_source(models_dir: Path) -> str:
    """The first checkpoint under models_dir, else 'demo'."""
    checkpoints = find_checkpoints(models_dir)
    return str(checkpoints[0]) if checkpoints else "demo"


def folder_sha256(folder: Path, hash_cache: HashCache) -> str:
    """A stable hash for a diffusers folder: sha256 over each weight/config file's path and sha256."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hash_cache.sha256(path).encode())
    return digest.hexdigest()


def demo_sha256(pipe) -> str:
    """The demo's weights are fixed by seeds; hash them so the infotext names exactly this model."""
    digest = hashlib.sha256()
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _folder_pipeline_class(folder: Path) -> str:
    """model_index.json's _class_name ("" when unreadable)."""
    import json

    try:
        return str(json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError):
        return ""


def _load_single_file(path: Path, config: ModelConfig, dtype: torch.dtype):
    """An original-layout checkpoint (A1111's kind): SD 1/2 or SDXL base, told apart by its keys."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    kind = read_checkpoint_kind(path)
    if kind.refusal:
        raise ModelLoadError(f"{path}: {kind.refusal}")
    is_sdxl = kind.family == "sdxl"
    if config.model_config:
        config_class = _folder_pipeline_class(Path(config.model_config))
        if kind.family != "unknown" and config_class and (config_class == "StableDiffusionXLPipeline") != is_sdxl:
            raise ModelLoadError(f"{path}: this is {'an SDXL' if is_sdxl else 'an SD 1/2'} checkpoint, but "
                                 f"--model-config {config.model_config} is a {config_class} folder")
    elif is_sdxl and _offline():
        raise ModelLoadError(f"{path}: an SDXL checkpoint needs its configs to load offline: pass --model-config "
                             "with a diffusers SDXL folder (stabilityai/stable-diffusion-xl-base-1.0's configs and "
                             "tokenizers; the weights come from the checkpoint)")
    kwargs = dict(torch_dtype=dtype, local_files_only=_offline() or config.model_config is not None)
    if config.model_config:
        kwargs["config"] = config.model_config
    if is_sdxl:
        return StableDiffusionXLPipeline.from_single_file(str(path), add_watermarker=False, **kwargs)
    return StableDiffusionPipeline.from_single_file(str(path), safety_checker=None, requires_safety_checker=False,
                                                    **kwargs)


def _load_diffusers(source: str, config: ModelConfig, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    path = Path(source)
    common = dict(torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelLoadError(f"{source}: expected a .safetensors or .ckpt checkpoint, or a diffusers folder")
        return _load_single_file(path, config, dtype)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{source}: this folder is not a diffusers pipeline (no model_index.json)")
        pipeline_class = _folder_pipeline_class(path)
        if pipeline_class == "StableDiffusionXLPipeline":
            from diffusers import StableDiffusionXLPipeline

            # No watermarker: it changes pixels whenever the invisible-watermark package is present.
            return StableDiffusionXLPipeline.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype,
                                                             add_watermarker=False)
        if pipeline_class.startswith("StableDiffusionXL"):
            raise ModelLoadError(f"{source}: {pipeline_class} models (the SDXL refiner, inpainting) are not supported; "
                                 "use an SDXL base model")
        return StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, **common)
    if source.count("/") == 1 and not source.startswith((".", "/")) and not path.suffix:
        if _offline():
            raise ModelLoadError(f"{source}: not a local path, and hub downloads are off (HF_HUB_OFFLINE=1)")
        return StableDiffusionPipeline.from_pretrained(source, **common)
    raise ModelLoadError(f"{source}: no such file or folder")


def load_model(config: ModelConfig, hash_cache: HashCache | None = None) -> LoadedModel:
    """Load the model config.model names.

    Raises:
        ModelLoadError: one line naming the path and the problem (missing, not a pipeline,
            corrupt, a refiner or inpainting model); nothing is half-loaded.
    """
    hash_cache = hash_cache or HashCache()
    device = pick_device(config.device)
    dtype = pick_dtype(config.precision, device)
    if config.model == "demo":
        from ti.demo import build_demo_pipeline

        pipe = build_demo_pipeline()
        pipe.to(device=device, dtype=dtype)
        return LoadedModel(pipe=pipe, name="demo", source="demo", sha256=demo_sha256(pipe), device=device,
                           dtype=dtype, is_demo=True)
    try:
        pipe = _load_diffusers(config.model, config, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers raises many kinds (OSError, KeyError, safetensors errors...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{config.model}: could not load a Stable Diffusion model ({first_line})") from exc
    if getattr(pipe, "text_encoder_2", None) is not None and type(pipe).__name__ != "StableDiffusionXLPipeline":
        raise ModelLoadError(f"{config.model}: loaded as {type(pipe).__name__}; only SDXL base models are supported")
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.eval().requires_grad_(False)
    path = Path(config.model)
    if path.is_file():
        sha, legacy, name = hash_cache.sha256(path), legacy_model_hash(path), path.stem
    elif path.is_dir():
        sha, legacy, name = folder_sha256(path, hash_cache), None, path.name
    else:
        sha, legacy, name = hashlib.sha256(config.model.encode()).hexdigest(), None, config.model.replace("/", "_")
    return LoadedModel(pipe=pipe, name=name, source=config.model, sha256=sha, device=device, dtype=dtype,
                       legacy_hash=legacy)
