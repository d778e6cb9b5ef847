"""Schedule type "Automatic" as A1111 v1.10: Karras for DPM++ 2M, DPM++ SDE, DPM2, DPM2 a;
exponential for DPM++ 2M SDE; the sampler's own (uniform) discretisation for the rest."""

import pytest
import torch

from ti.config import GenerateConfig
from ti.errors import ConfigError
from ti.generate import txt2img
from ti.infotext import parse_infotext, sampler_and_schedule
from ti.pipeline import LoadedModel, demo_sha256
from ti.samplers import infotext_schedule, make_scheduler, resolve_schedule


@pytest.mark.parametrize("sampler, concrete, written", [
    ("DPM++ 2M", "Karras", "Karras"), ("DPM++ SDE", "Karras", "Karras"), ("DPM2", "Karras", "Karras"),
    ("DPM2 a", "Karras", "Karras"), ("DPM++ 2M SDE", "Exponential", "Exponential"),
    ("Euler a", "Uniform", None), ("Euler", "Uniform", None), ("DDIM", "Uniform", None), ("UniPC", "Uniform", None),
])
def test_automatic_is_what_a1111_picks_for_the_sampler(sampler, concrete, written):
    assert resolve_schedule(sampler, "Automatic") == concrete
    assert infotext_schedule(sampler, "Automatic") == written
    scheduler = make_scheduler(sampler, None, "Automatic")
    assert bool(getattr(scheduler.config, "use_karras_sigmas", False)) == (concrete == "Karras")
    assert bool(getattr(scheduler.config, "use_exponential_sigmas", False)) == (concrete == "Exponential")


def test_a_chosen_schedule_is_used_and_written_even_where_automatic_would_differ():
    assert not make_scheduler("DPM++ 2M", None, "Uniform").config.use_karras_sigmas
    assert infotext_schedule("DPM++ 2M", "Uniform") == "Uniform"
    assert make_scheduler("Euler", None, "Karras").config.use_karras_sigmas
    assert make_scheduler("DPM++ 2M Karras", None, "Automatic").config.use_karras_sigmas  # the old combined name
    with pytest.raises(ConfigError, match="has no Karras schedule"):
        make_scheduler("DDIM", None, "Karras")
    with pytest.raises(ConfigError, match="schedule type"):
        GenerateConfig(prompt="x", schedule_type="Polyexponential")


@pytest.fixture(scope="module")
def demo_model(tiny_pipe):
    return LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                       device=torch.device("cpu"), dtype=torch.float32, is_demo=True)


def test_an_a1111_infotext_pasted_in_gives_a1111s_schedule_and_writes_it_back(demo_model):
    """`Sampler: DPM++ 2M, Schedule type: Karras` (what A1111 writes for Automatic) reads back as
    Karras, and ours writes the same two keys; with Automatic ours gives the same picture."""
    sampler, schedule = sampler_and_schedule({"Sampler": "DPM++ 2M", "Schedule type": "Karras"})
    base = dict(prompt="a tree", steps=3, width=64, height=64, seed=2, sampler=sampler)
    pasted = txt2img(demo_model, {}, GenerateConfig(**base, schedule_type=schedule)).images[0]
    automatic = txt2img(demo_model, {}, GenerateConfig(**base)).images[0]
    uniform = txt2img(demo_model, {}, GenerateConfig(**base, schedule_type="Uniform")).images[0]
    assert pasted.image.tobytes() == automatic.image.tobytes() != uniform.image.tobytes()
    for picture, expected in ((pasted, "Karras"), (automatic, "Karras"), (uniform, "Uniform")):
        params = parse_infotext(picture.infotext)[2]
        assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", expected)
    euler = txt2img(demo_model, {}, GenerateConfig(**{**base, "sampler": "Euler a"})).images[0]
    assert "Schedule type" not in parse_infotext(euler.infotext)[2]
