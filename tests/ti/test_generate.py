"""txt2img on the tiny model: seeds, embeddings, infotext in the PNG, samplers."""

import datetime as dt

import numpy as np
import pytest
import torch
from PIL import Image

from ti.config import GenerateConfig
from ti.embedding import Embedding
from ti.errors import ConfigError
from ti.generate import save_generated, txt2img
from ti.infotext import parse_infotext, parse_ti_hashes
from ti.pipeline import LoadedModel, demo_sha256


@pytest.fixture(scope="module")
def demo_model(tiny_pipe):
    return LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                       device=torch.device("cpu"), dtype=torch.float32, is_demo=True)


def small(**kw):
    base = dict(prompt="a tree", steps=2, width=64, height=64, seed=42)
    base.update(kw)
    return GenerateConfig(**base)


def pixels(generated):
    return np.asarray(generated.image, dtype=np.int16)


def test_same_seed_same_image_and_batch_position_does_not_matter(demo_model):
    one = txt2img(demo_model, {}, small(seed=7)).images[0]
    again = txt2img(demo_model, {}, small(seed=7)).images[0]
    batch = txt2img(demo_model, {}, small(seed=6, batch_size=2)).images
    other = txt2img(demo_model, {}, small(seed=8)).images[0]
    assert np.array_equal(pixels(one), pixels(again))
    assert [g.seed for g in batch] == [6, 7]
    assert np.abs(pixels(batch[1]) - pixels(one)).max() <= 1  # batched math may differ in the last bit
    assert not np.array_equal(pixels(one), pixels(other))


def test_random_seed_is_reported(demo_model):
    result = txt2img(demo_model, {}, small(seed=-1, batch_count=2))
    seeds = [g.seed for g in result.images]
    assert seeds[1] == seeds[0] + 1
    assert f"Seed: {seeds[0]}" in result.images[0].infotext


def test_embedding_used_changes_image_and_is_in_infotext(demo_model):
    emb = Embedding(name="myemb", vectors=torch.randn(2, 32) * 3, sha256="ab" * 32)
    plain = txt2img(demo_model, {"myemb": emb}, small(prompt="a tree"))
    used = txt2img(demo_model, {"myemb": emb}, small(prompt="a myemb tree", negative_prompt="myemb"))
    assert used.used_embeddings == ["myemb"]
    assert not np.array_equal(pixels(plain.images[0]), pixels(used.images[0]))
    prompt, negative, params = parse_infotext(used.images[0].infotext)
    assert (prompt, negative) == ("a myemb tree", "myemb")
    assert params["Steps"] == "2" and params["Sampler"] == "Euler a" and params["Size"] == "64x64"
    assert params["Model hash"] == demo_model.short_hash and params["Model"] == "demo"
    assert parse_ti_hashes(params["TI hashes"]) == {"myemb": "ab" * 6}


def test_an_embedding_made_in_memory_has_no_hash_and_is_left_out_of_ti_hashes(demo_model):
    """As A1111: only embeddings with a file hash are listed; one built in code generates fine."""
    hashed = Embedding(name="filed", vectors=torch.randn(1, 32), sha256="cd" * 32)
    in_memory = Embedding(name="fresh", vectors=torch.randn(1, 32))
    result = txt2img(demo_model, {"filed": hashed, "fresh": in_memory}, small(prompt="a filed fresh tree"))
    assert sorted(result.used_embeddings) == ["filed", "fresh"]
    assert parse_ti_hashes(parse_infotext(result.images[0].infotext)[2]["TI hashes"]) == {"filed": "cd" * 6}
    alone = txt2img(demo_model, {"fresh": in_memory}, small(prompt="a fresh tree"))
    assert "TI hashes" not in parse_infotext(alone.images[0].infotext)[2]


def test_saved_png_carries_infotext_and_numbering(demo_model, tmp_path):
    result = txt2img(demo_model, {}, small(batch_size=2))
    paths = save_generated(result, tmp_path, when=dt.date(2026, 1, 2))
    assert [p.name for p in paths] == ["00000-42.png", "00001-43.png"]
    assert paths[0].parent == tmp_path / "txt2img-images" / "2026-01-02"
    with Image.open(paths[0]) as image:
        assert image.text["parameters"] == result.images[0].infotext
    more = save_generated(txt2img(demo_model, {}, small()), tmp_path, when=dt.date(2026, 1, 2))
    assert more[0].name == "00002-42.png"


@pytest.mark.parametrize("sampler", ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "LMS", "Heun", "DPM2", "UniPC"])
def test_samplers_run_and_are_named(demo_model, sampler):
    result = txt2img(demo_model, {}, small(sampler=sampler, steps=3))
    _, _, params = parse_infotext(result.images[0].infotext)
    name, _, schedule = sampler.partition(" Karras")
    assert params["Sampler"] == sampler.replace(" Karras", "")
    if sampler.endswith("Karras"):
        assert params["Schedule type"] == "Karras"
    assert result.images[0].image.size == (64, 64)


def test_interrupt_stops_between_batches(demo_model):
    calls = []
    result = txt2img(demo_model, {}, small(batch_count=3), on_progress=lambda d, t: calls.append((d, t)),
                     should_stop=lambda: len(calls) >= 1)
    assert result.interrupted
    assert len(result.images) == 1
    assert calls[0][1] == 6


@pytest.mark.parametrize("field, kwargs", [("steps", {"steps": 0}), ("width", {"width": 100}),
                                           ("seed", {"seed": -5}), ("batch size", {"batch_size": 0})])
def test_bad_parameters_name_the_field(field, kwargs):
    with pytest.raises(ConfigError) as info:
        small(**kwargs)
    assert info.value.field == field


def test_unknown_sampler_is_refused(demo_model):
    with pytest.raises(ConfigError, match="unknown sampler"):
        txt2img(demo_model, {}, small(sampler="Nope"))


def test_concurrent_saves_get_distinct_numbers(demo_model, tmp_path):
    import threading

    result = txt2img(demo_model, {}, small())
    copies = [type(result)(images=[type(result.images[0])(image=result.images[0].image, seed=i, infotext="x")])
              for i in range(8)]
    threads = [threading.Thread(target=save_generated, args=(c, tmp_path), kwargs={"when": dt.date(2026, 1, 3)})
               for c in copies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(p.name[:5] for p in (tmp_path / "txt2img-images" / "2026-01-03").glob("*.png"))
    assert names == [f"{i:05d}" for i in range(8)]


def test_an_interrupted_picture_says_so_in_its_infotext(demo_model):
    calls = []
    result = txt2img(demo_model, {}, small(steps=5), on_progress=lambda d, t: calls.append(d),
                     should_stop=lambda: len(calls) >= 2)
    assert result.interrupted and calls == [1, 2]
    [interrupted] = result.images
    assert "Steps: 5," in interrupted.infotext and "Interrupted: at step 2 of 5" in interrupted.infotext
    [finished] = txt2img(demo_model, {}, small(steps=5)).images
    assert "Interrupted" not in finished.infotext
