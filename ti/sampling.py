"""The denoising loop of txt2img: diffusers' StableDiffusionPipeline loop, with the conditioning
chosen per sampler step (prompt editing, alternation) and A1111's separate cond/uncond passes.

Why our own loop: diffusers takes one fixed prompt_embeds tensor and batches the negative and
the positive prompt together, which needs them the same length. A1111 recomputes the
conditioning when `[from:to:when]` or `[a|b]` says so, and, when the prompt and the negative
prompt have different numbers of 75-token chunks, runs them as two UNet calls instead of padding
(its default; "Pad conds" is an option there). For one fixed prompt of the negative's length
this loop does exactly the pipeline's arithmetic, so pictures stay bit-identical to diffusers'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ti.conditioning import Conditioning
from ti.prompt_schedule import ScheduleEntry


@dataclass
class ConditioningSchedule:
    """One prompt's conditioning over the sampler steps: (end_at_step, tensor [B, 77·k, C]),
    as A1111's reconstruct_cond_batch picks it (see ti.prompt_schedule.step_text)."""

    entries: list[tuple[int, Conditioning]]

    def at(self, sampling_step: int) -> Conditioning:
        for end_at_step, conditioning in self.entries:
            if sampling_step <= end_at_step:
                return conditioning
        return self.entries[0][1]

    @property
    def changes(self) -> bool:
        return len(self.entries) > 1

    @classmethod
    def encoded(cls, schedule: Sequence[ScheduleEntry], encode: Callable[[str], Conditioning]) -> "ConditioningSchedule":
        """Encode each distinct text once (schedule merged by the caller)."""
        by_text: dict[str, Conditioning] = {}
        entries = []
        for end_at_step, text in schedule:
            if text not in by_text:
                by_text[text] = encode(text)
            entries.append((end_at_step, by_text[text]))
        return cls(entries)


def sdxl_time_ids(height: int, width: int, batch: int, dtype, device) -> torch.Tensor:
    """SDXL's six size conditions at generation, as A1111 and diffusers: original = target = the
    picture's size, crop (0, 0)."""
    return torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=dtype, device=device)


def _unet(unet, model_input, timestep, conditioning: Conditioning, time_ids):
    added = None
    if conditioning.pooled is not None:
        added = {"text_embeds": conditioning.pooled, "time_ids": time_ids[: model_input.shape[0]]}
    return unet(model_input, timestep, encoder_hidden_states=conditioning.context, added_cond_kwargs=added,
                return_dict=False)[0]


@dataclass
class WeightedConditioning:
    """One subprompt of a composable prompt (ti.composable): its schedule and its weight."""

    schedule: ConditioningSchedule
    weight: float = 1.0


def _composed_noise(unet, model_input, timestep, conds: list[Conditioning], weights: list[float],
                    negative: Conditioning, cfg_scale: float, time_ids) -> torch.Tensor:
    """A1111's combine_denoised: uncond + sum_i weight_i * cfg_scale * (cond_i - uncond). One UNet
    call when every conditioning has the same length, else one per conditioning (no padding)."""
    everything = [negative, *conds]
    if len({c.context.shape[1] for c in everything}) == 1:
        joined = Conditioning(torch.cat([c.context for c in everything]),
                              None if negative.pooled is None else torch.cat([c.pooled for c in everything]))
        predictions = _unet(unet, torch.cat([model_input] * len(everything)), timestep, joined, time_ids).chunk(
            len(everything))
    else:
        predictions = [_unet(unet, model_input, timestep, c, time_ids) for c in everything]
    noise_negative = predictions[0]
    noise = noise_negative.clone()
    for prediction, weight in zip(predictions[1:], weights):
        noise += (prediction - noise_negative) * (weight * cfg_scale)
    return noise


def denoise(pipe, scheduler, latents: torch.Tensor, steps: int, cfg_scale: float,
            cond: ConditioningSchedule | Sequence[WeightedConditioning], uncond: ConditioningSchedule, generators,
            on_step: Callable[[int], bool],
            on_latents: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, int]:
    """Run the sampler from `latents` (initial noise, unscaled); returns (latents, steps done).

    cond: the prompt's schedule, or a composable prompt's weighted subprompts (one at weight 1
    is the same as its schedule alone: diffusers' arithmetic, bit for bit).

    on_latents(latents), when given, sees the latents after every model call (live previews).
    on_step(steps_done) is called after every sampler step; True stops the loop there (the
    picture is then decoded from where it got to, as diffusers does on interrupt). Steps count
    the sampler's steps, not its model calls (a second-order sampler makes about two per step);
    the conditioning schedule, as in A1111, advances per model call.
    """
    unet = pipe.unet
    weighted = [WeightedConditioning(cond)] if isinstance(cond, ConditioningSchedule) else list(cond)
    composed = not (len(weighted) == 1 and weighted[0].weight == 1.0)
    cond = weighted[0].schedule
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps
    latents = latents * scheduler.init_noise_sigma
    extra_step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)
    guided = cfg_scale > 1 and unet.config.time_cond_proj_dim is None  # diffusers' rule
    steps_done = 0
    height, width = latents.shape[-2] * pipe.vae_scale_factor, latents.shape[-1] * pipe.vae_scale_factor
    # Enough rows for the largest UNet call: the negative and every subprompt.
    time_ids = sdxl_time_ids(height, width, (1 + len(weighted)) * latents.shape[0], latents.dtype, latents.device)
    for index, timestep in enumerate(timesteps):
        positive, negative = cond.at(index), uncond.at(index)
        if composed:  # A1111 runs the negative too when the CFG scale is 1 or less
            model_input = scheduler.scale_model_input(latents, timestep)
            noise_pred = _composed_noise(unet, model_input, timestep, [w.schedule.at(index) for w in weighted],
                                         [w.weight for w in weighted], negative, cfg_scale, time_ids)
        elif guided:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
            if positive.context.shape[1] == negative.context.shape[1]:
                both = Conditioning(torch.cat([negative.context, positive.context]),
                                    None if positive.pooled is None else torch.cat([negative.pooled, positive.pooled]))
                noise_negative, noise_positive = _unet(unet, model_input, timestep, both, time_ids).chunk(2)
            else:  # A1111's default for different lengths: two passes, neither padded
                half = latents.shape[0]
                noise_negative = _unet(unet, model_input[:half], timestep, negative, time_ids)
                noise_positive = _unet(unet, model_input[half:], timestep, positive, time_ids)
            noise_pred = noise_negative + cfg_scale * (noise_positive - noise_negative)
        else:
            model_input = scheduler.scale_model_input(latents, timestep)
            noise_pred = _unet(unet, model_input, timestep, positive, time_ids)
        latents = scheduler.step(noise_pred, timestep, latents, **extra_step_kwargs, return_dict=False)[0]
        steps_done = min(steps, math.ceil((index + 1) * steps / len(timesteps)))
        if on_latents is not None:
            on_latents(latents)
        if on_step(steps_done):
            break
    return latents, steps_done


def vae_needs_float32(vae) -> bool:
    """SDXL's VAE overflows in fp16 and its config says so (force_upcast): it must encode and
    decode in float32, as diffusers' pipelines and training scripts do."""
    return vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


def decode(pipe, latents: torch.Tensor, generators) -> list:
    """Latents -> PIL images, as the pipeline decodes them (no safety checker). An fp16 VAE that
    asks for it (vae_needs_float32) decodes in float32, then goes back."""
    vae = pipe.vae
    upcast = vae_needs_float32(vae)
    if upcast:
        vae.to(torch.float32)
        latents = latents.float()
    try:
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    finally:
        if upcast:
            vae.to(torch.float16)
    return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * image.shape[0])


# A1111's "Approx cheap" live preview: a fixed linear map from SD's four latent channels to RGB.
_CHEAP_PREVIEW = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
                               [-0.184, -0.271, -0.473]])


def cheap_preview(latents: torch.Tensor):
    """A rough PIL picture of the first latent of a batch, without the VAE (A1111's Approx cheap)."""
    from PIL import Image

    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float().cpu(), _CHEAP_PREVIEW)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)
