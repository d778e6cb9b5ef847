"""Samplers by AUTOMATIC1111 name -> diffusers schedulers (a1111-compat.md §9)."""

from __future__ import annotations

from ti.errors import ConfigError

# The noise schedule every SD 1.x/2.x checkpoint was trained with; used when no config is at hand.
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}

# name -> (diffusers class name, extra kwargs)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
# Schedulers that take use_karras_sigmas (and use_exponential_sigmas).
_KARRAS_CAPABLE = {"Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "UniPC"}
SCHEDULE_TYPES = ("Automatic", "Uniform", "Karras", "Exponential")
# What A1111 v1.10's "Automatic" schedule type is for each sampler (the 'scheduler' option of its
# sampler table); samplers not listed use their own (uniform) discretisation.
AUTOMATIC_SCHEDULES = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM2": "Karras", "DPM2 a": "Karras",
                       "DPM++ 2M SDE": "Exponential"}


def resolve_schedule(sampler: str, schedule_type: str) -> str:
    """The concrete schedule (Uniform, Karras or Exponential) that schedule_type means for sampler."""
    if schedule_type == "Automatic":
        return AUTOMATIC_SCHEDULES.get(sampler, "Uniform")
    return schedule_type


def infotext_schedule(sampler: str, schedule_type: str) -> str | None:
    """The `Schedule type:` A1111 writes: the concrete schedule, except for an Automatic that is
    the sampler's own discretisation (then no key at all, as for Euler a)."""
    if schedule_type == "Automatic" and sampler not in AUTOMATIC_SCHEDULES:
        return None
    return resolve_schedule(sampler, schedule_type)


def split_sampler_name(name: str) -> tuple[str, str]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'Karras'); plain names get 'Automatic' (A1111 ≥ 1.9)."""
    name = name.strip()
    if name.endswith(" Karras") and name[: -len(" Karras")] in SAMPLERS:
        return name[: -len(" Karras")], "Karras"
    return name, "Automatic"


def sampler_names() -> list[str]:
    """The names offered in the UI: each sampler, plus the '… Karras' variants."""
    names = list(SAMPLERS)
    names += [f"{n} Karras" for n in SAMPLERS if n in _KARRAS_CAPABLE and n != "Euler a"]
    return names


def make_scheduler(name: str, base_config: dict | None, schedule_type: str | None = None):
    """A diffusers scheduler for an A1111 sampler name.

    base_config: the loaded model's scheduler config (keeps its betas and prediction type);
    None uses SD's training schedule.
    schedule_type: one of SCHEDULE_TYPES; a "… Karras" sampler name says Karras itself.
    "Automatic" is what A1111 picks for the sampler (AUTOMATIC_SCHEDULES).
    """
    import diffusers

    sampler, implied_schedule = split_sampler_name(name)
    if sampler not in SAMPLERS:
        raise ConfigError("sampler", f"unknown sampler {name!r}; choose one of: {', '.join(sampler_names())}")
    schedule = implied_schedule if implied_schedule != "Automatic" else (schedule_type or "Automatic")
    if schedule not in SCHEDULE_TYPES:
        raise ConfigError("schedule type", f"unknown schedule type {schedule!r}; choose one of {SCHEDULE_TYPES}")
    class_name, extra = SAMPLERS[sampler]
    config = dict(SD_SCHEDULER_CONFIG if base_config is None else base_config)
    # Settings of another scheduler class (e.g. PNDM's skip_prk_steps) would be warned about.
    for key in ("_class_name", "_diffusers_version", "skip_prk_steps", "set_alpha_to_one",
                "clip_sample", "use_karras_sigmas", "algorithm_type"):
        config.pop(key, None)
    for key in ("use_exponential_sigmas", "use_beta_sigmas"):
        config.pop(key, None)
    config.update(extra)
    concrete = resolve_schedule(sampler, schedule)
    if concrete in ("Karras", "Exponential"):
        if sampler not in _KARRAS_CAPABLE:
            raise ConfigError("schedule type", f"sampler {sampler!r} has no {concrete} schedule")
        config["use_karras_sigmas" if concrete == "Karras" else "use_exponential_sigmas"] = True
    scheduler_class = getattr(diffusers, class_name)
    return scheduler_class.from_config(config)
