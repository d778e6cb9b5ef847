"""Clip skip (A1111's CLIP_stop_at_last_layers): conditioning, generation, infotext, training, CLI."""

from types import SimpleNamespace

import pytest
import torch

from ti.conditioning import PromptEncoder, effective_clip_skip
from ti.config import GenerateConfig
from ti.errors import ConfigError
from ti.generate import txt2img
from ti.infotext import parse_infotext
from ti.pipeline import LoadedModel, demo_sha256


@pytest.fixture(scope="module")
def demo_model(tiny_pipe):
    return LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                       device=torch.device("cpu"), dtype=torch.float32, is_demo=True)


def _encode(pipe, prompt, clip_skip, vectors=None):
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, vectors or {}, clip_skip=clip_skip)
    with torch.no_grad():
        return encoder.encode([prompt])[0]


@pytest.mark.parametrize("clip_skip", [2, 3])
def test_clip_skip_n_is_the_output_n_minus_1_layers_early_through_the_final_layer_norm(tiny_pipe, clip_skip):
    """A1111: hidden_states[-N], then final_layer_norm (diffusers' encode_prompt(clip_skip=k) means
    A1111's k+1, but reaches for text_model.final_layer_norm, which transformers 5 no longer has)."""
    ours = _encode(tiny_pipe, "a red tree", clip_skip)
    ids = tiny_pipe.tokenizer("a red tree", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = tiny_pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
        theirs = tiny_pipe.text_encoder.final_layer_norm(hidden)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(ours, _encode(tiny_pipe, "a red tree", 1), atol=1e-3)


def test_clip_skip_1_is_the_plain_last_layer(tiny_pipe):
    with torch.no_grad():
        theirs, _ = tiny_pipe.encode_prompt("a red tree", torch.device("cpu"), 1, False)
    assert torch.allclose(_encode(tiny_pipe, "a red tree", 1), theirs, atol=1e-6)


def test_embeddings_go_through_the_skipped_layers_with_gradients(tiny_pipe):
    # (No emphasis here: the demo encoder's final LayerNorm has zero bias, so the mean that
    # "Original" emphasis restores is ~0 and its gradient is ill-conditioned; real CLIP's is not.)
    vectors = torch.nn.Parameter(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 0.02)
    encoder = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, {"mytok": vectors}, clip_skip=2)
    cond, [parsed] = encoder.encode(["a photo of mytok"])
    assert parsed.used_embeddings == ["mytok"]
    (cond ** 2).sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0


@pytest.mark.parametrize("value", [0, 13, -1, 2.5, True])
def test_a_clip_skip_outside_1_to_12_is_refused_by_name(value):
    with pytest.raises(ConfigError, match="^Clip skip: must be a whole number from 1 to 12"):
        GenerateConfig(prompt="x", clip_skip=value)


def test_a_clip_skip_deeper_than_the_text_encoder_is_refused(tiny_pipe):
    layers = tiny_pipe.text_encoder.config.num_hidden_layers  # 5 in the demo model
    with pytest.raises(ConfigError, match=f"more than the text encoder's {layers} layers"):
        PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, {}, clip_skip=layers + 1)


def test_sd2_ignores_clip_skip_as_a1111_does_and_says_so():
    assert effective_clip_skip(SimpleNamespace(family="sd2"), 2)[0] == 1
    assert "ignored for SD 2.x" in effective_clip_skip(SimpleNamespace(family="sd2"), 2)[1]
    assert effective_clip_skip(SimpleNamespace(family="sd1"), 2) == (2, None)
    assert effective_clip_skip(SimpleNamespace(family="sd2"), 1) == (1, None)


def test_generation_uses_it_and_writes_it_into_the_infotext_after_the_model_as_a1111(demo_model):
    small = dict(prompt="a tree", steps=2, width=64, height=64, seed=5)
    plain = txt2img(demo_model, {}, GenerateConfig(**small)).images[0]
    skipped = txt2img(demo_model, {}, GenerateConfig(**small, clip_skip=2)).images[0]
    assert "Clip skip" not in plain.infotext  # A1111 leaves the default out
    _, _, params = parse_infotext(skipped.infotext)
    assert params["Clip skip"] == "2"
    keys = list(params)
    assert keys.index("Model") + 1 == keys.index("Clip skip")
    assert plain.image.tobytes() != skipped.image.tobytes()


def test_the_command_line_takes_clip_skip(tmp_path):
    from PIL import Image

    from ti.cli import main

    out = tmp_path / "g.png"
    assert main(["generate", "a tree", "--model", "demo", "--steps", "2", "--size", "64x64", "--seed", "1",
                 "--clip-skip", "2", "--out", str(out), "--embeddings-dir", str(tmp_path)]) == 0
    with Image.open(out) as picture:
        assert parse_infotext(picture.info["parameters"])[2]["Clip skip"] == "2"
    assert main(["generate", "a tree", "--model", "demo", "--clip-skip", "0", "--out", str(out)]) == 2
