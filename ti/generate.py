"""txt2img over the diffusers pipeline with our prompt conditioning; infotext; saving PNGs."""

from __future__ import annotations

import datetime as dt
import io
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ti import __version__
from ti.composable import AND_SEPARATOR, split_composable
from ti.conditioning import Conditioning, PromptEncoder, SDXLPromptEncoder, effective_clip_skip
from ti.config import GenerateConfig
from ti.embedding import Embedding
from ti.errors import ConfigError
from ti.formats import write_file_atomically
from ti.hypernetwork import HypernetworkLibrary, apply_hypernetworks, parse_hypernet_tags
from ti.infotext import format_infotext, format_ti_hashes
from ti.locks import module_lock, on_device
from ti.pipeline import LoadedModel
from ti.prompt_schedule import merged_schedule, prompt_schedule
from ti.samplers import infotext_schedule, make_scheduler, split_sampler_name
from ti.sampling import ConditioningSchedule, WeightedConditioning, decode, denoise

ProgressCallback = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: str
    path: Path | None = None


@dataclass
class GenerationResult:
    images: list[GeneratedImage] = field(default_factory=list)
    used_embeddings: list[str] = field(default_factory=list)
    token_count: int = 0
    negative_token_count: int = 0
    interrupted: bool = False
    hypernetworks: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def resolve_seed(seed: int) -> int:
    return random.randrange(2**32) if seed == -1 else int(seed)


def build_infotext(config: GenerateConfig, seed: int, model: LoadedModel, used: dict[str, Embedding],
                   steps_done: int | None = None) -> str:
    """A1111's infotext. steps_done < config.steps (an interrupted picture) adds
    `Interrupted: at step K of N`, so the file never claims the full step count."""
    sampler, implied = split_sampler_name(config.sampler)
    schedule = implied if implied != "Automatic" else config.schedule_type
    params: dict[str, object] = {
        "Steps": config.steps,
        "Sampler": sampler,
        "Schedule type": infotext_schedule(sampler, schedule),
        "CFG scale": config.cfg_scale,
        "Seed": seed,
        "Size": f"{config.width}x{config.height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "Clip skip": config.clip_skip if config.clip_skip > 1 else None,  # as A1111: only when not 1
    }
    hashed = {name: emb.shorthash for name, emb in used.items() if emb.shorthash}
    if hashed:  # as A1111: an embedding with no file hash (made in memory) is left out, not an error
        params["TI hashes"] = format_ti_hashes(hashed)
    params.update(config.extra_params)
    if steps_done is not None and steps_done < config.steps:
        params["Interrupted"] = f"at step {steps_done} of {config.steps}"
    params["Version"] = f"ti-studio {__version__}"
    return format_infotext(config.prompt, config.negative_prompt, params)


def with_default_hypernetwork(prompt: str, default_hypernetwork: str | None) -> str:
    """A1111's "add hypernetwork to prompt" setting: append `<hypernet:name:1>` unless already there."""
    if not default_hypernetwork:
        return prompt
    _, tags = parse_hypernet_tags(prompt)
    if any(name == default_hypernetwork for name, _ in tags):
        return prompt
    return f"{prompt} <hypernet:{default_hypernetwork}:1>".strip()


def txt2img(
    model: LoadedModel,
    embeddings: dict[str, Embedding],
    config: GenerateConfig,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    hypernetworks: HypernetworkLibrary | None = None,
    on_latents: Callable[[torch.Tensor], None] | None = None,
) -> GenerationResult:
    """Generate config.batch_count × config.batch_size images.

    Image i uses seed + i, and each image has its own generator, so a seed gives the same picture
    whatever its position in a batch. `<hypernet:name:strength>` tags in the prompt apply
    hypernetworks from `hypernetworks` (tags in the negative prompt are removed and ignored, as
    hypernetworks act on the whole UNet); the infotext keeps the tags, as A1111's does.
    """
    pipe = model.pipe
    scheduler = make_scheduler(config.sampler, dict(pipe.scheduler.config), config.schedule_type)
    # A fresh pipeline object over the same modules, for its helpers (extra step arguments, image
    # post-processing): the sampler belongs to this call only, so two generations at once don't mix.
    if model.is_sdxl:  # (the SDXL pipeline takes no safety-checker flag; its watermarker stays off)
        run_pipe = type(pipe)(**{**pipe.components, "scheduler": scheduler}, add_watermarker=False)
    else:
        run_pipe = type(pipe)(**{**pipe.components, "scheduler": scheduler},
                              requires_safety_checker=getattr(pipe.config, "requires_safety_checker", False))

    prompt_text, hypernet_tags = parse_hypernet_tags(config.prompt)
    negative_text, _ = parse_hypernet_tags(config.negative_prompt)
    if hypernet_tags and hypernetworks is None:
        raise ConfigError("prompt", "uses <hypernet:…> tags, but no hypernetwork folder is set")
    hypernetwork_pairs = hypernetworks.resolve(hypernet_tags) if hypernet_tags else []

    clip_skip, clip_skip_note = effective_clip_skip(model, config.clip_skip)
    vectors = {n: e.vectors for n, e in embeddings.items()}
    if model.is_sdxl:
        encoder = SDXLPromptEncoder(model.tokenizer, model.text_encoder, model.tokenizer_2, model.text_encoder_2,
                                    vectors)
    else:
        encoder = PromptEncoder(model.tokenizer, model.text_encoder, vectors, clip_skip=clip_skip)
    # Composable prompts: the prompt's `AND`-separated subprompts, each with its weight (the
    # negative is one text, as in A1111). Prompt editing and alternation: the texts each takes
    # over the steps, each parsed once.
    subprompts = split_composable(prompt_text)
    positive_schedules = [merged_schedule(prompt_schedule(part.text, config.steps)) for part in subprompts]
    negative_schedule = merged_schedule(prompt_schedule(negative_text, config.steps))
    schedules = [*positive_schedules, negative_schedule]
    parsed = {text: encoder.parse(text) for schedule in schedules for _, text in schedule}
    positive_parsed = [parsed[text] for schedule in positive_schedules for _, text in schedule]
    negative_parsed = [parsed[text] for _, text in negative_schedule]
    used_names: list[str] = []
    for item in positive_parsed + negative_parsed:
        used_names += [name for name in item.used_embeddings if name not in used_names]
    result = GenerationResult(used_embeddings=used_names,
                              token_count=max(item.token_count for item in positive_parsed),
                              negative_token_count=max(item.token_count for item in negative_parsed),
                              hypernetworks=list(hypernet_tags))
    if clip_skip_note:
        result.notes.append(clip_skip_note)
    if AND_SEPARATOR.search(negative_text):
        result.notes.append("AND in the negative prompt is text, as in A1111: only the prompt is composable")
    batch = config.batch_size
    # A training run with "unload" may have parked the text encoder (and the VAE) on the CPU:
    # bring each over for this call under its lock, and back afterwards.
    with torch.no_grad(), on_device(model.text_encoder, model.device):
        def encode(text: str) -> Conditioning:  # each prompt at its own length (no padding)
            encoded = encoder.encode_parsed([parsed[text]])
            conditioning = encoded if isinstance(encoded, Conditioning) else Conditioning(encoded)
            return conditioning.repeat(batch)

        cond = [WeightedConditioning(ConditioningSchedule.encoded(schedule, encode), part.weight)
                for schedule, part in zip(positive_schedules, subprompts)]
        uncond = ConditioningSchedule.encoded(negative_schedule, encode)
        if model.is_sdxl:
            # A1111 (and Forge) zero an empty SDXL negative, context and pooled, wherever the
            # schedule has one (diffusers zeroes only a missing one); the time ids stay.
            uncond = ConditioningSchedule([(end, conditioning.zeros_like() if text == "" else conditioning)
                                           for (end, conditioning), (_, text) in zip(uncond.entries, negative_schedule)])
    first_seed = resolve_seed(config.seed)
    total_steps = config.steps * config.batch_count
    used = {n: embeddings[n] for n in used_names}

    for batch_index in range(config.batch_count):
        seeds = [(first_seed + batch_index * batch + i) % 2**32 for i in range(batch)]
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        # Noise is drawn on the CPU so the same seed gives the same picture on any device.
        latents = torch.stack([
            torch.randn((4, config.height // 8, config.width // 8), generator=g, dtype=torch.float32)
            for g in generators
        ]).to(device=model.device, dtype=model.dtype)

        def on_step(steps_done: int, _base=batch_index * config.steps) -> bool:
            if on_progress:
                on_progress(_base + steps_done, total_steps)
            return bool(should_stop and should_stop())

        # Hypernetworks set the shared UNet's attention processors: hold its lock meanwhile.
        with torch.no_grad(), module_lock(pipe.unet), on_device(pipe.vae, model.device), \
                apply_hypernetworks(pipe.unet, hypernetwork_pairs) as applied:
            if batch_index == 0:
                result.notes += applied.unmatched_messages()
            latents, steps_done = denoise(run_pipe, scheduler, latents, config.steps, config.cfg_scale, cond, uncond,
                                          generators, on_step, on_latents)
            images = decode(run_pipe, latents, generators)
        for image, seed in zip(images, seeds):
            result.images.append(GeneratedImage(image=image, seed=seed,
                                                infotext=build_infotext(config, seed, model, used, steps_done)))
        if should_stop and should_stop():
            result.interrupted = True
            break
    return result


_NUMBERED = re.compile(r"^(\d{5})-")


def next_image_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def save_png_with_infotext(image: Image.Image, infotext: str, path: Path) -> Path:
    """Write a PNG with the infotext in its `parameters` text chunk, atomically."""
    info = PngInfo()
    info.add_text("parameters", infotext)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG", pnginfo=info)
    return write_file_atomically(Path(path), encoded.getvalue())


_SAVE_LOCK = threading.Lock()


def save_generated(result: GenerationResult, outputs_dir: Path, when: dt.date | None = None) -> list[Path]:
    """Save under <outputs>/txt2img-images/<YYYY-MM-DD>/<NNNNN>-<seed>.png, numbered like A1111.

    Numbering and writing happen under one lock, so two generations finishing together (two
    browser tabs) never pick the same number.
    """
    folder = Path(outputs_dir) / "txt2img-images" / (when or dt.date.today()).isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with _SAVE_LOCK:
        number = next_image_number(folder)
        for generated in result.images:
            path = folder / f"{number:05d}-{generated.seed}.png"
            generated.path = save_png_with_infotext(generated.image, generated.infotext, path)
            paths.append(path)
            number += 1
    return paths
