"""The latent cache: every training image (and its flipped copy) VAE-encoded once, up front.

A VAE encode costs about as much as the UNet step it feeds, and the picture never changes, so
we pay it once per image instead of once per step. The three A1111 sampling methods:

- once: one sample of the VAE's posterior, drawn at cache time (seeded per file), kept;
- deterministic: the posterior mean;
- random: mean and std kept, and a fresh sample drawn on every use.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from ti.locks import module_lock
from ti.sampling import vae_needs_float32
from ti.train.dataset import Bucket, PreparedImage, SkippedImage
from ti.train.seeds import derive_seed, generator_for

VAE_DOWNSCALE = 8


@dataclass
class CachedSample:
    """One training sample: a cached latent with what is needed to build its prompt and loss."""

    source: Path
    flipped: bool
    caption: str
    bucket: Bucket
    latent: torch.Tensor  # [4, h, w] float32, already × the VAE scaling factor (mean for "random")
    latent_std: torch.Tensor | None  # "random" only: the posterior std (× scaling factor)
    loss_weight: torch.Tensor | None  # [1, h, w] float32 from the alpha channel; None: uniform
    size_conditions: tuple[int, int, int, int, int, int] | None = None  # SDXL's time ids, see size_conditions()

    def latent_for_use(self, generator: torch.Generator) -> torch.Tensor:
        """The latent this use trains on: a fresh posterior sample for "random", else the cached one."""
        if self.latent_std is None:
            return self.latent
        eps = torch.randn(self.latent.shape, generator=generator, dtype=torch.float32)
        return self.latent + self.latent_std * eps.to(self.latent.device)


def size_conditions(item: PreparedImage, flipped: bool) -> tuple[int, int, int, int, int, int]:
    """SDXL's six size conditions of a training picture: (original height, original width, crop
    top, crop left, target height, target width). A mirrored copy's crop window is mirrored too."""
    original_width, original_height = item.original_size
    top, left = item.crop_top_left
    bucket_width, bucket_height = item.bucket
    if flipped:
        left = item.scaled_size[0] - left - bucket_width
    return (original_height, original_width, top, left, bucket_height, bucket_width)


def pixels_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [1, 3, H, W] float32 in [-1, 1] (what SD's VAE expects)."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def alpha_loss_weight(alpha: Image.Image) -> torch.Tensor:
    """Alpha -> latent-sized loss weights with mean 1 (A1111: w -= min; w /= mean).

    A uniform alpha (fully opaque PNGs are common) gives weight 1 everywhere; A1111 divides
    0 by 0 there and trains on NaN.
    """
    latent_size = (alpha.width // VAE_DOWNSCALE, alpha.height // VAE_DOWNSCALE)
    small = alpha.resize(latent_size, Image.Resampling.BOX)  # area average: coverage per latent pixel
    weight = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).unsqueeze(0)
    if float(weight.max() - weight.min()) <= 1e-6:
        return torch.ones_like(weight)
    weight = weight - weight.min()
    return weight / weight.mean()


@contextmanager
def _float32_while_encoding(vae) -> Iterator[None]:
    """The VAE in float32 for the block, under its lock (a generation in another tab waits), then back."""
    with module_lock(vae):
        vae.to(torch.float32)
        try:
            yield
        finally:
            vae.to(torch.float16)


@torch.no_grad()
def _encode(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std [4, h, w] (float32, CPU first) of one image."""
    parameter = next(vae.parameters())
    posterior = vae.encode(pixels.to(device=parameter.device, dtype=parameter.dtype)).latent_dist
    return posterior.mean[0].float(), posterior.std[0].float()


def encode_images(
    vae,
    images: Iterable[PreparedImage | SkippedImage],
    latent_sampling: str,
    flip: bool,
    seed: int,
    device: torch.device,
    on_image: Callable[[int, Path], None] | None = None,
) -> tuple[list[CachedSample], list[SkippedImage]]:
    """Encode each prepared image (and its mirror image when flip is on) into the cache.

    Args:
        vae: the pipeline's AutoencoderKL (frozen; used under no_grad).
        images: from iter_prepared_images; SkippedImage entries are passed through.
        latent_sampling: "once", "deterministic" or "random".
        flip: also cache a horizontally mirrored copy of each image (a separate VAE encode:
            mirroring the latent is not the same thing).
        seed: the run's seed; "once" draws each file's sample from (seed, file name, flipped).
        device: where the cache lives (the UNet's device: batches are built there).
        on_image: called with (files done, path) after each file, for progress.
    Returns:
        (samples in file-name order, original before flipped; skipped images).
    """
    # An fp16 VAE that overflows (SDXL's) would cache inf/NaN latents: encode in float32.
    with _float32_while_encoding(vae) if vae_needs_float32(vae) else nullcontext():
        return _encode_all(vae, images, latent_sampling, flip, seed, device, on_image)


def _encode_all(vae, images, latent_sampling, flip, seed, device, on_image):
    scaling = float(vae.config.scaling_factor)
    samples: list[CachedSample] = []
    skipped: list[SkippedImage] = []
    for count, item in enumerate(images, start=1):
        if isinstance(item, SkippedImage):
            skipped.append(item)
            if on_image:
                on_image(count, item.path)
            continue
        variants = [(False, item.pixels, item.alpha)]
        if flip:
            mirrored_alpha = ImageOps.mirror(item.alpha) if item.alpha is not None else None
            variants.append((True, ImageOps.mirror(item.pixels), mirrored_alpha))
        for flipped, pixels, alpha in variants:
            mean, std = _encode(vae, pixels_to_tensor(pixels))
            latent, latent_std = mean * scaling, None
            if latent_sampling == "once":
                generator = generator_for(derive_seed(seed, "latent", item.path.name, flipped))
                latent = (mean + std * torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)) * scaling
            elif latent_sampling == "random":
                latent_std = (std * scaling).to(device)
            weight = alpha_loss_weight(alpha).to(device) if alpha is not None else None
            samples.append(CachedSample(source=item.path, flipped=flipped, caption=item.caption, bucket=item.bucket,
                                        latent=latent.to(device), latent_std=latent_std, loss_weight=weight,
                                        size_conditions=size_conditions(item, flipped)))
        if on_image:
            on_image(count, item.path)
    return samples, skipped
