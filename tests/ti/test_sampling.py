"""Our denoising loop (ti/sampling.py): diffusers' pictures for a fixed prompt, and A1111's
per-step conditioning (prompt editing, alternation) and separate passes for unequal lengths."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from ti.conditioning import PromptEncoder
from ti.config import GenerateConfig
from ti.embedding import Embedding
from ti.generate import txt2img
from ti.pipeline import LoadedModel, demo_sha256
from ti.samplers import make_scheduler


@pytest.fixture(scope="module")
def demo_model(tiny_pipe):
    return LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                       device=torch.device("cpu"), dtype=torch.float32, is_demo=True)


def small(**changes):
    return GenerateConfig(**{**dict(prompt="a red tree", negative_prompt="blurry", steps=4, width=64, height=64,
                                   seed=11, sampler="Euler"), **changes})


@contextmanager
def unet_calls(pipe):
    """Record the encoder_hidden_states of every UNet call."""
    seen = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def encoded(pipe, text):
    with torch.no_grad():
        return PromptEncoder(pipe.tokenizer, pipe.text_encoder, {}).encode([text])[0]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M Karras", "Heun", "DDIM", "DPM++ SDE"])
def test_a_fixed_prompt_gives_diffusers_own_picture(demo_model, sampler):
    """The loop is the pipeline's arithmetic: bit-identical pictures for every kind of sampler."""
    pipe = demo_model.pipe
    config = small(sampler=sampler, batch_size=2, cfg_scale=6.5)
    ours = [np.asarray(image.image) for image in txt2img(demo_model, {}, config).images]
    generators = [torch.Generator().manual_seed(seed) for seed in (11, 12)]
    latents = torch.stack([torch.randn((4, 8, 8), generator=g) for g in generators])
    reference = type(pipe)(**{**pipe.components, "scheduler": make_scheduler(sampler, dict(pipe.scheduler.config))},
                           requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    theirs = reference(prompt_embeds=encoded(pipe, "a red tree").repeat(2, 1, 1),
                       negative_prompt_embeds=encoded(pipe, "blurry").repeat(2, 1, 1), num_inference_steps=4,
                       guidance_scale=6.5, height=64, width=64, latents=latents, generator=generators).images
    for mine, reference_image in zip(ours, theirs):
        assert np.array_equal(mine, np.asarray(reference_image))


def test_prompt_and_negative_of_different_lengths_run_as_two_passes_unpadded(demo_model):
    long_negative = ", ".join(["blurry ugly"] * 40)  # more than 75 tokens: two chunks
    pipe = demo_model.pipe
    with unet_calls(pipe) as seen:
        txt2img(demo_model, {}, small(negative_prompt=long_negative, steps=2))
    negative_length = encoded(pipe, long_negative).shape[1]
    assert negative_length > 77
    assert [tuple(hidden.shape[:2]) for hidden in seen] == [(1, negative_length), (1, 77)] * 2  # negative, prompt
    assert torch.equal(seen[0], encoded(pipe, long_negative)) and torch.equal(seen[1], encoded(pipe, "a red tree"))
    with unet_calls(pipe) as seen:
        txt2img(demo_model, {}, small(steps=2))
    assert [tuple(hidden.shape[:2]) for hidden in seen] == [(2, 77)] * 2  # equal lengths: one batched pass


def test_prompt_editing_switches_the_conditioning_as_a1111(demo_model):
    """[a tree:a house:0.5] at 4 steps: A1111's schedule is [(2, tree), (4, house)], and its
    sampler step i uses the first entry with i <= end: steps 0, 1, 2 the tree, step 3 the house."""
    pipe = demo_model.pipe
    tree, house = encoded(pipe, "a tree"), encoded(pipe, "a house")
    with unet_calls(pipe) as seen:
        edited = txt2img(demo_model, {}, small(prompt="a [tree:house:0.5]"))
    positives = [hidden[1:] for hidden in seen]  # batched [negative, prompt]
    assert [torch.equal(p, tree) for p in positives] == [True, True, True, False]
    assert torch.equal(positives[3], house)
    assert edited.images[0].infotext.startswith("a [tree:house:0.5]\n")  # the prompt as written


def test_alternation_changes_every_step_with_a1111s_late_first_switch(demo_model):
    pipe = demo_model.pipe
    cat, dog = encoded(pipe, "a cat"), encoded(pipe, "a dog")
    with unet_calls(pipe) as seen:
        txt2img(demo_model, {}, small(prompt="a [cat|dog]"))
    names = ["cat" if torch.equal(h[1:], cat) else "dog" if torch.equal(h[1:], dog) else "?" for h in seen]
    assert names == ["cat", "cat", "dog", "cat"]


def test_the_negative_prompt_is_scheduled_too_and_embeddings_work_inside_edits(demo_model):
    pipe = demo_model.pipe
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(4)) * 0.02
    embeddings = {"mytok": Embedding("mytok", vectors, step=3, sha256="abcdef012345" * 4)}
    with unet_calls(pipe) as seen:
        result = txt2img(demo_model, embeddings, small(prompt="a photo of [mytok:a dog:2]",
                                                       negative_prompt="[blurry::1]"))
    assert result.used_embeddings == ["mytok"]
    assert "TI hashes" in result.images[0].infotext
    negatives = [hidden[:1] for hidden in seen]
    assert torch.equal(negatives[0], encoded(pipe, "blurry")) and torch.equal(negatives[1], encoded(pipe, "blurry"))
    assert torch.equal(negatives[2], encoded(pipe, ""))


def test_conditioning_is_encoded_once_per_distinct_text(demo_model, monkeypatch):
    texts = []
    real = PromptEncoder.encode_parsed
    monkeypatch.setattr(PromptEncoder, "encode_parsed",
                        lambda self, parsed, min_chunks=1: texts.append(parsed[0].text) or real(self, parsed, min_chunks))
    txt2img(demo_model, {}, small(prompt="a [cat|dog]", steps=6))
    assert sorted(texts) == ["a cat", "a dog", "blurry"]
