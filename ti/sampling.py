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

from ti.prompt_schedule import ScheduleEntry


@dataclass
class ConditioningSchedule:
    """One prompt's conditioning over the sampler steps: (end_at_step, tensor [B, 77·k, C]),
    as A1111's reconstruct_cond_batch picks it (see ti.prompt_schedule.step_text)."""

    entries: list[tuple[int, torch.Tensor]]

    def at(self, sampling_step: int) -> torch.Tensor:
        for end_at_step, conditioning in self.entries:
            if sampling_step <= end_at_step:
                return conditioning
        return self.entries[0][1]

    @property
    def changes(self) -> bool:
        return len(self.entries) > 1

    @classmethod
    def encoded(cls, schedule: Sequence[ScheduleEntry], encode: Callable[[str], torch.Tensor]) -> "ConditioningSchedule":
        """Encode each distinct text once (schedule merged by the caller)."""
        by_text: dict[str, torch.Tensor] = {}
        entries = []
        for end_at_step, text in schedule:
            if text not in by_text:
                by_text[text] = encode(text)
            entries.append((end_at_step, by_text[text]))
        return cls(entries)


def denoise(pipe, scheduler, latents: torch.Tensor, steps: int, cfg_scale: float, cond: ConditioningSchedule,
            uncond: ConditioningSchedule, generators, on_step: Callable[[int], bool]) -> tuple[torch.Tensor, int]:
    """Run the sampler from `latents` (initial noise, unscaled); returns (latents, steps done).

    on_step(steps_done) is called after every sampler step; True stops the loop there (the
    picture is then decoded from where it got to, as diffusers does on interrupt). Steps count
    the sampler's steps, not its model calls (a second-order sampler makes about two per step);
    the conditioning schedule, as in A1111, advances per model call.
    """
    unet = pipe.unet
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps
    latents = latents * scheduler.init_noise_sigma
    extra_step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)
    guided = cfg_scale > 1 and unet.config.time_cond_proj_dim is None  # diffusers' rule
    steps_done = 0
    for index, timestep in enumerate(timesteps):
        positive, negative = cond.at(index), uncond.at(index)
        if guided:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep)
            if positive.shape[1] == negative.shape[1]:
                noise = unet(model_input, timestep, encoder_hidden_states=torch.cat([negative, positive]),
                             return_dict=False)[0]
                noise_negative, noise_positive = noise.chunk(2)
            else:  # A1111's default for different lengths: two passes, neither padded
                half = latents.shape[0]
                noise_negative = unet(model_input[:half], timestep, encoder_hidden_states=negative,
                                      return_dict=False)[0]
                noise_positive = unet(model_input[half:], timestep, encoder_hidden_states=positive,
                                      return_dict=False)[0]
            noise_pred = noise_negative + cfg_scale * (noise_positive - noise_negative)
        else:
            model_input = scheduler.scale_model_input(latents, timestep)
            noise_pred = unet(model_input, timestep, encoder_hidden_states=positive, return_dict=False)[0]
        latents = scheduler.step(noise_pred, timestep, latents, **extra_step_kwargs, return_dict=False)[0]
        steps_done = min(steps, math.ceil((index + 1) * steps / len(timesteps)))
        if on_step(steps_done):
            break
    return latents, steps_done


def decode(pipe, latents: torch.Tensor, generators) -> list:
    """Latents -> PIL images, as the pipeline decodes them (no safety checker)."""
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * image.shape[0])
