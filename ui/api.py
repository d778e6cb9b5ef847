"""A1111's HTTP API (`/sdapi/v1/…`, `--api`) over the same services as the page.

Clients such as the `webuiapi` package, Open WebUI and SillyTavern drive A1111's webui this way;
they work against ti-studio unchanged for what we have (../shared/reference/a1111-api.md):
txt2img, png-info, progress, interrupt, options, the model, sampler, embedding and hypernetwork
lists. What we do not have (hires fix, face restoration, tiling, subseeds, scripts) is refused
naming the field, in A1111's error shape, never answered with a silently different picture.
Unknown request keys are ignored, as A1111 does.

One generation at a time (services.generation_lock, shared with the txt2img tab); progress and
interrupt act on the API's current generation, or on the training job when one runs. The
request and response shapes, and what maps them to ours, are in ui/api_shapes.py.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from ti import __version__
from ti.errors import TIError
from ti.generate import save_generated, txt2img
from ti.infotext import parse_infotext
from ti.samplers import SAMPLERS, SCHEDULE_TYPES
from ti.sampling import cheap_preview
from ui.api_shapes import (
    SAMPLER_ALIASES,
    ApiError,
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    PngInfoRequest,
    Txt2ImgRequest,
    checkpoint_entries,
    decode_image,
    generate_config_for,
    model_matches,
    model_title,
    png_base64,
    source_for,
    train_values,
)
from ui.jobs import StopToken
from ui.services import AppServices

log = logging.getLogger(__name__)


@dataclass
class ApiProgress:
    """The API's current generation, for GET progress and POST interrupt."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    step: int = 0
    total: int = 0
    started: float = 0.0
    stop: StopToken | None = None
    latents: object = None  # the latest latents of the generation, for progress's current_image

    def begin(self, total: int) -> StopToken:
        with self.lock:
            self.running, self.step, self.total, self.started = True, 0, total, time.time()
            self.stop = StopToken()
            return self.stop

    def update(self, step: int, total: int) -> None:
        with self.lock:
            self.step, self.total = step, total

    def see_latents(self, latents) -> None:
        with self.lock:
            self.latents = latents.detach()[:1].clone()

    def end(self) -> None:
        with self.lock:
            self.running, self.stop, self.latents = False, None, None


def build_api_router(services: AppServices, credentials: list[tuple[str, str]] | None, flags: dict) -> APIRouter:
    """The /sdapi/v1 routes; credentials: HTTP Basic logins required on every route (None: open)."""
    basic = HTTPBasic(auto_error=False)
    progress = ApiProgress()

    def check_login(given: HTTPBasicCredentials | None = Depends(basic)) -> None:
        if not credentials:
            return
        if given is not None:
            for user, password in credentials:
                if secrets.compare_digest(given.username, user) and secrets.compare_digest(given.password, password):
                    return
        raise HTTPException(status_code=401, detail="Unauthorized: this API asks for a login (HTTP Basic)",
                            headers={"WWW-Authenticate": "Basic"})

    router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(check_login)])

    def answer(work):
        try:
            return work()
        except ApiError as error:
            return error.response()
        except TIError as error:
            return ApiError(422, type(error).__name__, str(error)).response()
        except Exception as error:  # A1111's shape for the unexpected too; the traceback goes to the log
            log.exception("API request failed")
            return ApiError(500, type(error).__name__, str(error)).response()

    @router.post("/txt2img")
    def api_txt2img(request: Txt2ImgRequest):
        def work():
            config = generate_config_for(request, services)
            with services.generation_lock:
                stop = progress.begin(config.steps * config.batch_count)
                try:
                    snapshot = services.library.refresh()
                    with services.using_model() as model:
                        result = txt2img(model, snapshot.embeddings, config, on_progress=progress.update,
                                         should_stop=stop, hypernetworks=services.hypernetworks,
                                         on_latents=progress.see_latents)
                        model_name, model_hash = model.name, model.short_hash
                finally:
                    progress.end()
            if request.save_images:
                save_generated(result, services.paths.outputs_dir)
            seeds = [image.seed for image in result.images]
            info = {
                "prompt": config.prompt, "all_prompts": [config.prompt] * len(seeds),
                "negative_prompt": config.negative_prompt, "all_negative_prompts": [config.negative_prompt] * len(seeds),
                "seed": seeds[0] if seeds else config.seed, "all_seeds": seeds, "subseed": -1,
                "all_subseeds": [-1] * len(seeds), "subseed_strength": 0, "width": config.width,
                "height": config.height, "sampler_name": config.sampler, "cfg_scale": config.cfg_scale,
                "steps": config.steps, "batch_size": config.batch_size, "restore_faces": False,
                "face_restoration_model": None, "sd_model_name": model_name, "sd_model_hash": model_hash,
                "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
                "denoising_strength": None, "extra_generation_params": {}, "index_of_first_image": 0,
                "infotexts": [image.infotext for image in result.images], "styles": request.styles or [],
                "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": config.clip_skip,
                "is_using_inpainting_conditioning": False, "version": f"ti-studio {__version__}",
            }
            images = [png_base64(image.image, image.infotext) for image in result.images] if request.send_images else []
            return {"images": images, "parameters": request.model_dump(), "info": json.dumps(info)}
        return answer(work)

    @router.post("/png-info")
    def api_png_info(request: PngInfoRequest):
        def work():
            if not request.image:
                raise ApiError(404, "HTTPException", "Request body is missing an image")
            picture = decode_image(request.image)
            text = str(picture.info.get("parameters") or "")
            items = {key: value for key, value in picture.info.items() if key != "parameters" and isinstance(value, str)}
            parameters = {}
            if text:
                prompt, negative, params = parse_infotext(text)
                parameters = {"Prompt": prompt, "Negative prompt": negative, **params}
                if "Size" in params and "x" in params["Size"]:
                    parameters["Size-1"], parameters["Size-2"] = params["Size"].split("x", 1)
                parameters.setdefault("Clip skip", "1")
                parameters.setdefault("Schedule type", "Automatic")
            return {"info": text, "items": items, "parameters": parameters}
        return answer(work)

    @router.post("/create/embedding")
    def api_create_embedding(request: CreateEmbeddingRequest):
        from ti.create import create_embedding

        try:
            with services.using_model() as model:
                path = create_embedding(model, request.name, request.init_text, request.num_vectors_per_token,
                                        services.paths.embeddings_dir, overwrite=request.overwrite_old)
        except TIError as error:  # A1111 answers 200 with the message
            return {"info": f"create embedding error: {error}"}
        services.library.refresh(force=True)
        return {"info": f"create embedding filename: {path}"}

    @router.post("/create/hypernetwork")
    def api_create_hypernetwork(request: CreateHypernetworkRequest):
        from ti.hypernetwork import HypernetworkStructure, create_hypernetwork, parse_number_list

        try:
            layers = (parse_number_list(request.layer_structure, "layer_structure")
                      if isinstance(request.layer_structure, str) else list(request.layer_structure))
            dropout = request.dropout_structure
            if isinstance(dropout, str):
                dropout = parse_number_list(dropout, "dropout_structure") if dropout.strip() else None
            structure = HypernetworkStructure(layer_structure=tuple(layers), activation=request.activation_func,
                                              weight_init=request.weight_init, layer_norm=request.add_layer_norm,
                                              use_dropout=request.use_dropout,
                                              dropout_structure=tuple(dropout) if dropout else None)
            path = create_hypernetwork(request.name, services.paths.hypernetwork_dir,
                                       [int(size) for size in request.enable_sizes], structure,
                                       overwrite=request.overwrite_old)
        except (TIError, ValueError) as error:
            return {"info": f"create hypernetwork error: {error}"}
        return {"info": f"create hypernetwork filename: {path}"}

    def train(kind: str, body: dict) -> dict:
        """A1111's train/*: synchronous (the request lasts the whole run; progress shows it)."""
        from ti.train import train_embedding, train_hypernetwork
        from ui.train_form import EMBEDDING_FORM, HYPERNETWORK_FORM, build_train_config
        from ui.train_widgets import training_work

        form, folder, runner, name_key = (
            (EMBEDDING_FORM, services.paths.embeddings_dir, train_embedding, "embedding_name") if kind == "embedding"
            else (HYPERNETWORK_FORM, services.paths.hypernetwork_dir, train_hypernetwork, "hypernetwork_name"))
        label = "train embedding" if kind == "embedding" else "train hypernetwork"
        try:
            values = {**train_values(body), "name": body.get(name_key, ""),
                      "embeddings_dir": str(services.paths.embeddings_dir)}
            config = build_train_config(values, services.paths.templates_dir, form, log_root=services.paths.log_dir,
                                        data_root=services.paths.data_root)
            services.jobs.start(form.job_kind, f"Training {config.name}", training_work(runner, services.using_model,
                                                                                        config, folder))
        except TIError as error:
            return {"info": f"{label} complete: filename:  error: {error}"}
        snapshot = services.jobs.wait()
        path = getattr(snapshot.result, "path", "")
        return {"info": f"{label} complete: filename: {path} error: {snapshot.error or None}"}

    @router.post("/train/embedding")
    def api_train_embedding(body: dict):
        return train("embedding", body)

    @router.post("/train/hypernetwork")
    def api_train_hypernetwork(body: dict):
        return train("hypernetwork", body)

    @router.get("/memory")
    def api_memory():
        import torch

        ram = {}
        try:
            fields_kb = dict(line.split(":", 1) for line in open("/proc/meminfo", encoding="ascii"))
            total = int(fields_kb["MemTotal"].split()[0]) * 1024
            free = int(fields_kb["MemAvailable"].split()[0]) * 1024
            ram = {"free": free, "used": total - free, "total": total}
        except (OSError, KeyError, ValueError) as error:
            ram = {"error": str(error)}
        if not torch.cuda.is_available():
            return {"ram": ram, "cuda": {"error": "no CUDA device"}}
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        return {"ram": ram, "cuda": {
            "system": {"free": free, "used": total - free, "total": total},
            **{name: {"current": stats.get(f"{name}_bytes.all.current", 0), "peak": stats.get(f"{name}_bytes.all.peak", 0)}
               for name in ("active", "allocated", "reserved", "inactive_split")},
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)}}}

    @router.get("/progress")
    def api_progress(skip_current_image: bool = False):
        snapshot = services.jobs.snapshot()
        with progress.lock:
            generating, step, total, latents = progress.running, progress.step, progress.total, progress.latents
        if generating:
            fraction = min(1.0, 0.01 + step / max(total, 1))
            job, job_count, job_no, sampling = "txt2img", 1, 0, (step, total)
        elif snapshot.running and snapshot.kind in ("train-embedding", "train-hypernetwork"):
            fraction = min(1.0, snapshot.step / max(snapshot.total, 1))
            job, job_count, job_no, sampling = snapshot.kind, snapshot.total, snapshot.step, (0, 0)
        else:
            fraction, job, job_count, job_no, sampling = 0.0, "", 0, 0, (0, 0)
        eta = snapshot.eta_seconds if job.startswith("train") else None
        current_image = None  # A1111's live preview: for training, its latest preview picture
        preview = snapshot.details.get("preview") if job.startswith("train") and not skip_current_image else None
        if generating and latents is not None and not skip_current_image:  # A1111's "Approx cheap" preview
            buffer = io.BytesIO()
            cheap_preview(latents).save(buffer, format="PNG")
            current_image = base64.b64encode(buffer.getvalue()).decode("ascii")
        if preview:
            try:
                with open(preview, "rb") as handle:
                    current_image = base64.b64encode(handle.read()).decode("ascii")
            except OSError:
                current_image = None
        return {"progress": fraction, "eta_relative": eta or 0.0,
                "state": {"skipped": False, "interrupted": False, "stopping_generation": False, "job": job,
                          "job_count": job_count, "job_timestamp": "0", "job_no": job_no,
                          "sampling_step": sampling[0], "sampling_steps": sampling[1]},
                "current_image": current_image, "textinfo": snapshot.message if job.startswith("train") else None}

    @router.post("/interrupt")
    def api_interrupt():
        with progress.lock:
            if progress.stop is not None:
                progress.stop.stop()
        services.jobs.stop()  # a training run stops at its next step boundary, saved
        return {}

    @router.post("/skip")
    def api_skip():
        return None

    @router.get("/options")
    def api_get_options():
        model = services.model
        return {"sd_model_checkpoint": model_title(model) if model else "", "sd_checkpoint_hash": model.sha256 if model else None,
                "sd_hypernetwork": services.api_options.get("sd_hypernetwork", "None"),
                "CLIP_stop_at_last_layers": services.api_options.get("CLIP_stop_at_last_layers", 1),
                "sd_vae": "Automatic", "samples_format": "png", "enable_pnginfo": True,
                "textual_inversion_add_hashes_to_infotext": True, "extra_networks_default_multiplier": 1.0}

    @router.post("/options")
    def api_set_options(options: dict):
        def work():
            wanted = options.get("sd_model_checkpoint")
            if wanted and not model_matches(services, wanted):
                source = source_for(services, wanted)
                if source is None:
                    raise ApiError(500, "RuntimeError", f"model {wanted!r} not found")
                services.switch_model(source)
            if "sd_hypernetwork" in options:
                name = options["sd_hypernetwork"] or "None"
                if name != "None" and name not in services.hypernetwork_names():
                    raise ApiError(500, "RuntimeError", f"hypernetwork {name!r} not found")
                services.api_options["sd_hypernetwork"] = name
            if "CLIP_stop_at_last_layers" in options:
                from ti.config import check_clip_skip

                value = options["CLIP_stop_at_last_layers"]
                check_clip_skip(int(value) if isinstance(value, (int, float, str)) and str(value).isdigit() else value)
                services.api_options["CLIP_stop_at_last_layers"] = int(value)
            return None
        return answer(work)

    @router.get("/cmd-flags")
    def api_cmd_flags():
        return flags

    @router.get("/samplers")
    def api_samplers():
        return [{"name": name, "aliases": SAMPLER_ALIASES.get(name, []), "options": {}} for name in SAMPLERS]

    @router.get("/schedulers")
    def api_schedulers():
        return [{"name": label.lower(), "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for label in SCHEDULE_TYPES]

    @router.get("/sd-models")
    def api_sd_models():
        return checkpoint_entries(services)

    @router.get("/embeddings")
    def api_embeddings():
        snapshot = services.library.refresh()

        def entry(embedding):
            return {"step": embedding.step, "sd_checkpoint": embedding.checkpoint_hash,
                    "sd_checkpoint_name": embedding.checkpoint_name, "shape": embedding.dim,
                    "vectors": embedding.num_vectors}
        # A1111's "skipped": readable embeddings of another width; unreadable files are in neither.
        skipped = {item.embedding.name: entry(item.embedding) for item in snapshot.skipped if item.embedding is not None}
        return {"loaded": {name: entry(embedding) for name, embedding in snapshot.embeddings.items()},
                "skipped": skipped}

    @router.get("/hypernetworks")
    def api_hypernetworks():
        folder = services.paths.hypernetwork_dir
        return [{"name": name, "path": str(folder / f"{name}.pt")} for name in services.hypernetwork_names()]

    @router.post("/refresh-embeddings")
    def api_refresh_embeddings():
        services.library.refresh(force=True)
        return None

    @router.post("/refresh-checkpoints")
    def api_refresh_checkpoints():
        return None  # sd-models lists the folder afresh on every call

    for path, value in (("/sd-vae", []), ("/upscalers", [{"name": "None", "model_name": None, "model_path": None,
                                                           "model_url": None, "scale": 4}]),
                        ("/latent-upscale-modes", []), ("/prompt-styles", []), ("/loras", []), ("/face-restorers", []),
                        ("/scripts", {"txt2img": [], "img2img": []})):
        router.add_api_route(path, (lambda value=value: value), methods=["GET"])
    for path in ("/refresh-vae", "/refresh-loras"):
        router.add_api_route(path, lambda: None, methods=["POST"])
    return router


def redacted_flags(args) -> dict:
    """cmd-flags: every flag, with passwords hidden (A1111 shows them in clear)."""
    flags = dict(vars(args))
    for key in ("gradio_auth", "api_auth"):
        if flags.get(key):
            flags[key] = ",".join(f"{pair.split(':', 1)[0]}:***" for pair in str(flags[key]).split(","))
    return flags
