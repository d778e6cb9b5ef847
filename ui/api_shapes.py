"""A1111's API shapes and their translation to ours: request models with A1111's defaults, the
refusals of what we do not have, A1111's error body, images in and out, checkpoint titles.

ui/api.py serves them; this module holds no state.
"""

from __future__ import annotations

import base64
import binascii
import io

from fastapi.responses import JSONResponse
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict

from ti.config import GenerateConfig
from ti.generate import with_default_hypernetwork
from ti.samplers import SAMPLERS, SCHEDULE_TYPES, split_sampler_name
from ui.services import AppServices

# A1111's sampler aliases (k-diffusion names), for GET samplers.
SAMPLER_ALIASES = {
    "Euler a": ["k_euler_a", "k_euler_ancestral"], "Euler": ["k_euler"], "LMS": ["k_lms"], "Heun": ["k_heun"],
    "DPM2": ["k_dpm_2"], "DPM2 a": ["k_dpm_2_a"], "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ 2M SDE": ["k_dpmpp_2m_sde"],
    "DPM++ SDE": ["k_dpmpp_sde"], "DDIM": ["ddim"], "PLMS": ["plms"], "UniPC": ["unipc"],
}


class ApiError(Exception):
    """An error answered in A1111's shape: {error, detail, body, errors}."""

    def __init__(self, status_code: int, error: str, detail: str):
        super().__init__(detail)
        self.status_code, self.error, self.detail = status_code, error, detail

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status_code,
                            content={"error": self.error, "detail": self.detail, "body": "", "errors": self.detail})


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI, with its defaults; other keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    enable_hr: bool = False
    override_settings: dict | None = None
    override_settings_restore_afterwards: bool = True
    script_name: str | None = None
    script_args: list = []
    alwayson_scripts: dict = {}
    send_images: bool = True
    save_images: bool = False


class CreateEmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    num_vectors_per_token: int = 1
    overwrite_old: bool = False
    init_text: str = "*"


class CreateHypernetworkRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    enable_sizes: list[int | str] = [768, 320, 640, 1280]
    overwrite_old: bool = False
    layer_structure: str | list[float] = "1, 2, 1"
    activation_func: str = "linear"
    weight_init: str = "Normal"
    add_layer_norm: bool = False
    use_dropout: bool = False
    dropout_structure: str | list[float] | None = None


# A1111's train/* arguments -> TrainConfig fields (widget names of build_train_config).
TRAIN_FIELD_NAMES = {
    "learn_rate": "learning_rate", "batch_size": "batch_size", "gradient_step": "grad_accum",
    "data_root": "data_dir", "log_directory": "log_dir", "training_width": "width", "training_height": "height",
    "varsize": "no_resize", "steps": "max_steps", "clip_grad_mode": "clip_grad", "clip_grad_value": "clip_value",
    "shuffle_tags": "shuffle_tags", "tag_drop_out": "tag_dropout", "latent_sampling_method": "latent_sampling",
    "use_weight": "alpha_weight", "create_image_every": "preview_every", "save_embedding_every": "save_every",
    "save_hypernetwork_every": "save_every", "template_filename": "template",
    "save_image_with_stored_embedding": "png_embedding", "preview_prompt": "preview_prompt",
    "preview_negative_prompt": "preview_negative_prompt", "preview_steps": "preview_steps",
    "preview_sampler_name": "preview_sampler", "preview_cfg_scale": "preview_cfg", "preview_seed": "preview_seed",
}


def train_values(body: dict) -> dict:
    """An A1111 train/* body -> build_train_config's values (missing ones take A1111's UI defaults)."""
    values = {ours: body[theirs] for theirs, ours in TRAIN_FIELD_NAMES.items() if theirs in body}
    if values.get("clip_grad") == "disabled":
        values["clip_grad"] = "none"
    if not body.get("preview_from_txt2img", False):
        values["preview_prompt"] = ""
    if "preview_sampler_name" in body and body["preview_sampler_name"] in (None, ""):
        values.pop("preview_sampler")
    return values


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = ""


def refuse_unsupported(request: Txt2ImgRequest) -> None:
    """Fields that would need what we do not have: refused by name (A1111 would change the picture)."""
    asked = [("enable_hr", request.enable_hr, "hires fix"), ("restore_faces", request.restore_faces, "face restoration"),
             ("tiling", request.tiling, "tiling"), ("subseed_strength", request.subseed_strength > 0, "variation seeds"),
             ("script_name", bool(request.script_name), "scripts"),
             ("alwayson_scripts", bool(request.alwayson_scripts), "always-on scripts")]
    for name, wanted, what in asked:
        if wanted:
            raise ApiError(422, "UnsupportedField", f"{name}: ti-studio has no {what}; leave {name} unset")


def scheduler_label(value: str | None) -> str:
    """A1111's scheduler name or label (`karras`, `Karras`, `automatic`) -> our schedule type."""
    if not value:
        return "Automatic"
    for label in SCHEDULE_TYPES:
        if value.strip().lower() == label.lower():
            return label
    raise ApiError(422, "UnsupportedField", f"scheduler: {value!r} is not one of ours ({', '.join(SCHEDULE_TYPES)})")


def generate_config_for(request: Txt2ImgRequest, services: AppServices) -> GenerateConfig:
    refuse_unsupported(request)
    sampler, implied = split_sampler_name(request.sampler_name or request.sampler_index)
    if sampler not in SAMPLERS:
        raise ApiError(422, "UnsupportedField", f"sampler_name: {sampler!r} is not one of ours ({', '.join(SAMPLERS)})")
    schedule = implied if implied != "Automatic" else scheduler_label(request.scheduler)
    overrides = request.override_settings or {}
    clip_skip = int(overrides.get("CLIP_stop_at_last_layers", services.api_options.get("CLIP_stop_at_last_layers", 1)))
    prompt = request.prompt
    hypernetwork = overrides.get("sd_hypernetwork") or services.api_options.get("sd_hypernetwork")
    if hypernetwork and hypernetwork != "None":
        prompt = with_default_hypernetwork(prompt, hypernetwork)
    wanted_model = overrides.get("sd_model_checkpoint")
    if wanted_model and not model_matches(services, wanted_model):
        raise ApiError(422, "UnsupportedField", "override_settings: sd_model_checkpoint: switch the model with "
                                                "POST /sdapi/v1/options first (a per-request switch is not offered)")
    return GenerateConfig(prompt=prompt, negative_prompt=request.negative_prompt, steps=request.steps,
                          sampler=sampler, schedule_type=schedule, cfg_scale=request.cfg_scale, seed=request.seed,
                          width=request.width, height=request.height, batch_count=request.n_iter,
                          batch_size=request.batch_size, clip_skip=clip_skip)


def png_base64(image: Image.Image, infotext: str) -> str:
    info = PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: str) -> Image.Image:
    """A1111's image input: raw base64 or a data: URL (URLs are not fetched here)."""
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        return Image.open(io.BytesIO(base64.b64decode(data, validate=False)))
    except (binascii.Error, OSError, ValueError) as error:
        raise ApiError(422, "InvalidImage", f"image: not a base64 image ({error})") from None


def model_title(model) -> str:
    return f"{model.name} [{model.short_hash}]"


def model_matches(services: AppServices, wanted: str) -> bool:
    model = services.model
    return wanted in (model.source, model.name, model_title(model), model.short_hash, model.sha256)


def checkpoint_entries(services: AppServices) -> list[dict]:
    """sd-models: every offered checkpoint; hashes only when already known (never hashed in a GET)."""
    entries = []
    for choice in services.model_choices():
        current = services.model is not None and choice == services.model.source
        short = services.model.short_hash if current else None
        name = "demo" if choice == "demo" else choice.rsplit("/", 1)[-1]
        entries.append({"title": f"{name} [{short}]" if short else name, "model_name": name.rsplit(".", 1)[0],
                        "hash": short, "sha256": services.model.sha256 if current else None, "filename": choice,
                        "config": None})
    return entries


def source_for(services: AppServices, wanted: str) -> str | None:
    for entry in checkpoint_entries(services):
        if wanted in (entry["title"], entry["model_name"], entry["filename"], entry["hash"], entry["sha256"],
                      entry["title"].split(" [")[0]):
            return entry["filename"]
    return None
