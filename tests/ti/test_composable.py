"""Composable prompts (`AND`): split as A1111's get_multicond_prompt_list splits them (its own
expressions; the expected values are what they give), and guided as its combine_denoised."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ti.composable import Subprompt, split_composable
from ti.conditioning import Conditioning
from ti.config import GenerateConfig
from ti.embedding import Embedding
from ti.generate import txt2img
from ti.pipeline import LoadedModel, demo_sha256
from ti.sampling import _composed_noise


@pytest.fixture(scope="module")
def demo_model(tiny_pipe):
    return LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                       device=torch.device("cpu"), dtype=torch.float32, is_demo=True)


@pytest.mark.parametrize("prompt, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("", [("", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a cat:1.2 AND a dog:0.5", [("a cat", 1.2), (" a dog", 0.5)]),
    ("a cat :1.2", [("a cat", 1.2)]),  # a weight without AND: the whole prompt guided 1.2x
    ("cat AND dog:-0.5", [("cat", 1.0), (" dog", -0.5)]),
    ("a:.5", [("a", 0.5)]),
    ("a:5.", [("a", 5.0)]),
    ("at 12:30", [("at 12", 30.0)]),  # A1111 reads it so too
    ("a cat AND", [("a cat", 1.0), ("", 1.0)]),
    ("a\nAND b", [("a", 1.0), (" b", 1.0)]),
    ("ANDROID and cat", [("ANDROID and cat", 1.0)]),  # capitals, a whole word
    ("(cat:1.2)", [("(cat:1.2)", 1.0)]),  # emphasis is not a weight
    ("[a:b:0.5] AND c", [("[a:b:0.5]", 1.0), (" c", 1.0)]),  # each subprompt keeps its prompt editing
])
def test_split_composable(prompt, expected):
    parts = split_composable(prompt)
    assert parts == [Subprompt(*item) for item in expected]


class _ContextSumUNet:
    """A stand-in UNet whose prediction is each picture's context sum: the formula shows through."""

    def __call__(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, return_dict=False):
        sums = encoder_hidden_states.sum(dim=(1, 2))
        return (torch.ones_like(sample) * sums[:, None, None, None],)


@pytest.mark.parametrize("lengths", [(77, 77, 77), (77, 154, 77)])  # one batched call; separate calls
def test_composed_noise_is_a1111s_combine_denoised(lengths):
    negative, first, second = (Conditioning(torch.full((2, length, 4), value)) for length, value in
                               zip(lengths, (1.0, 3.0, -2.0)))
    noise = _composed_noise(_ContextSumUNet(), torch.zeros(2, 4, 8, 8), 0, [first, second], [1.0, 0.5], negative,
                            7.0, None)
    uncond, cond_1, cond_2 = (float(c.context[0].sum()) for c in (negative, first, second))
    expected = uncond + 1.0 * 7.0 * (cond_1 - uncond) + 0.5 * 7.0 * (cond_2 - uncond)
    assert torch.allclose(noise, torch.full_like(noise, expected))


def _picture(model, prompt, embeddings=None, **options):
    values = dict(prompt=prompt, negative_prompt="blurry", steps=3, width=64, height=64, seed=5, cfg_scale=7.0)
    result = txt2img(model, embeddings or {}, GenerateConfig(**{**values, **options}))
    return np.asarray(result.images[0].image).astype(np.int16), result


def test_weights_and_repeats_scale_the_guidance(demo_model):
    plain, _ = _picture(demo_model, "a red tree")
    weight_one, _ = _picture(demo_model, "a red tree:1")
    assert np.array_equal(weight_one, plain)  # weight 1: ordinary guidance, bit for bit
    # uncond + 2 * 3.5 * (cond - uncond) is uncond + 7 * (cond - uncond): the same picture up to
    # float rounding; so is the same subprompt twice at 3.5.
    for prompt in ("a red tree:2", "a red tree AND a red tree"):
        composed, _ = _picture(demo_model, prompt, cfg_scale=3.5)
        assert np.abs(composed - plain).max() <= 2, prompt
    other, _ = _picture(demo_model, "a red tree", cfg_scale=3.5)
    assert np.abs(other - plain).max() > 10  # (the comparison can tell guidance scales apart)


def test_an_and_prompt_is_two_conditionings_with_embeddings_in_either(demo_model):
    embedding = Embedding("andtok", torch.randn(2, 32, generator=torch.Generator().manual_seed(3)))
    joined, result = _picture(demo_model, "a red tree AND a andtok house:0.7", {"andtok": embedding})
    as_text, _ = _picture(demo_model, "a red tree and a andtok house:0.7", {"andtok": embedding})
    first_only, _ = _picture(demo_model, "a red tree")
    assert np.abs(joined - as_text).max() > 10 and np.abs(joined - first_only).max() > 10
    infotext = result.images[0].infotext
    assert infotext.startswith("a red tree AND a andtok house:0.7\n")  # the prompt as written
    assert result.used_embeddings == ["andtok"]
    long_part = ", ".join(["a red tree"] * 30)  # two chunks beside one: separate UNet calls
    mixed, _ = _picture(demo_model, f"{long_part} AND a house")
    assert mixed.shape == (64, 64, 3)


def test_and_in_the_negative_prompt_is_text_with_a_note(demo_model):
    _, result = _picture(demo_model, "a red tree", negative_prompt="blurry AND dark")
    assert any("AND in the negative prompt is text" in note for note in result.notes)
    _, plain = _picture(demo_model, "a red tree")
    assert not any("AND" in note for note in plain.notes)


def test_sdxl_subprompts_carry_their_own_pooled_embedding():
    from ti.demo import build_demo_sdxl_pipeline

    pipe = build_demo_sdxl_pipeline()
    model = LoadedModel(pipe=pipe, name="tiny-xl", source="tiny-xl", sha256="ab" * 32, device=torch.device("cpu"),
                        dtype=torch.float32)
    plain, _ = _picture(model, "a red tree")
    doubled, _ = _picture(model, "a red tree:2", cfg_scale=3.5)
    assert np.abs(doubled - plain).max() <= 2
    joined, _ = _picture(model, "a red tree AND a blue house")
    assert np.abs(joined - plain).max() > 10

