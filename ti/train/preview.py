"""Preview pictures during training, and the image embeddings made from them.

A preview is an ordinary txt2img with the vectors as they are now (a copy: the sampler must not
see later updates), saved with its infotext. The image embedding is that picture with A1111's
caption overlay (`<name>` title; model, hash, `{n}v {steps}s` footers) wrapped in the
embedding's data layer and text chunk (ti.formats).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ti.config import GenerateConfig
from ti.embedding import Embedding
from ti.formats import embedding_file_bytes, image_embedding_bytes, write_file_atomically
from ti.generate import save_png_with_infotext, txt2img
from ti.pipeline import LoadedModel
from ti.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class PreviewFiles:
    preview: Path
    image_embedding: Path | None


def snapshot_embedding(name: str, vectors: torch.Tensor, step: int, model: LoadedModel) -> Embedding:
    """An Embedding holding a detached CPU copy of the vectors, stamped with step and model.

    Its sha256 is that of the .pt bytes it would be saved as (the writer is deterministic), so
    the preview's `TI hashes` matches the saved copy of the same step.
    """
    is_sdxl = bool(getattr(model, "is_sdxl", False))
    embedding = Embedding(name=name, vectors=vectors.detach().to("cpu", torch.float32).clone(), step=step,
                          checkpoint_hash=model.short_hash,
                          checkpoint_name=model.name.replace("/", "_").replace("\\", "_"), is_sdxl=is_sdxl)
    suffix = ".safetensors" if is_sdxl else ".pt"  # what the copy of this step is saved as
    embedding.sha256 = hashlib.sha256(embedding_file_bytes(embedding, suffix)).hexdigest()
    return embedding


def render_preview(model: LoadedModel, name: str, embedding: Embedding, config: TrainConfig, prompt: str,
                   library: dict[str, Embedding] | None = None):
    """txt2img of the preview prompt, `name` in it standing for this embedding and the library's
    other embeddings usable by name as in generation; returns the GeneratedImage."""
    width, height = config.preview_size()
    generate_config = GenerateConfig(prompt=prompt, negative_prompt=config.preview_negative_prompt,
                                     steps=config.preview_steps, sampler=config.preview_sampler,
                                     cfg_scale=config.preview_cfg, seed=config.preview_seed, width=width, height=height,
                                     clip_skip=config.clip_skip)
    return txt2img(model, {**(library or {}), name: embedding}, generate_config).images[0]


def caption_image(picture: Image.Image, embedding: Embedding, model_name: str) -> Image.Image:
    """A1111's overlay: a dark gradient at the top and bottom, the title, and the footers."""
    image = picture.convert("RGB").copy()
    width, height = image.size
    band = max(12, height // 6)
    shade = Image.new("L", (1, band))
    for y in range(band):
        shade.putpixel((0, y), int(200 * (1 - y / band)))
    shade = shade.resize((width, band))
    black = Image.new("RGB", (width, band), (0, 0, 0))
    image.paste(black, (0, 0), shade)
    image.paste(black, (0, height - band), shade.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((4, 2), f"<{embedding.name}>", fill=(255, 255, 255), font=font)
    footer = f"{model_name} [{embedding.checkpoint_hash or ''}] {embedding.num_vectors}v {embedding.step}s"
    draw.text((4, height - 12), footer, fill=(230, 230, 230), font=font)
    return image


def write_preview(model: LoadedModel, name: str, embedding: Embedding, config: TrainConfig, prompt: str,
                  preview_path: Path, image_embedding_path: Path | None,
                  library: dict[str, Embedding] | None = None) -> PreviewFiles:
    """Render and save the preview (and, when asked, the image embedding made from it).

    Args:
        name: the word the prompt uses for the embedding (the run's name).
        embedding: the snapshot to preview and to store; its own name (`<name>-<step>`, as in
            A1111) is what the image embedding loads as, so it never shadows the trained file.
    """
    generated = render_preview(model, name, embedding, config, prompt, library)
    save_png_with_infotext(generated.image, generated.infotext, preview_path)
    if image_embedding_path is None:
        return PreviewFiles(preview_path, None)
    captioned = caption_image(generated.image, embedding, model.name)
    try:
        data = image_embedding_bytes(embedding, ".png", base_image=captioned)
    except ValueError as error:  # a preview too small to carry the data layer: keep training without it
        log.warning("no image embedding at step %s: %s", embedding.step, error)
        return PreviewFiles(preview_path, None)
    write_file_atomically(image_embedding_path, data)
    return PreviewFiles(preview_path, image_embedding_path)
