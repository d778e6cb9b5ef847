"""The attention processor on the tiny model: hand-computed reference, strength, restore, where it fires; tags."""

import numpy as np
import pytest
import torch

from ti.config import GenerateConfig
from ti.errors import ConfigError
from ti.generate import txt2img
from ti.hypernetwork import Hypernetwork, HypernetworkStructure, apply_hypernetworks, parse_hypernet_tags
from ti.pipeline import LoadedModel, demo_sha256

# In the demo UNet: self-attention at 32 and 64 channels, cross-attention on the 32-wide text.
MID_SELF_ATTENTION = "mid_block.attentions.0.transformer_blocks.0.attn1"
DOWN_CROSS_ATTENTION = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"


def make_hypernetwork(name, sizes, seed, **settings):
    """Xavier-initialised so the effect is large enough to see (A1111's Normal init is near identity)."""
    structure = HypernetworkStructure(**{"weight_init": "XavierNormal", **settings})
    return Hypernetwork(name, sizes, structure, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def unet(tiny_pipe):
    return tiny_pipe.unet


@pytest.fixture(scope="module")
def unet_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([500]),
            torch.randn(1, 77, 32, generator=generator))


def unet_output(unet, unet_inputs):
    sample, timestep, text = unet_inputs
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=text).sample


def processors_of(unet):
    return {name: module.processor for name, module in unet.named_modules() if hasattr(module, "set_processor")}


def mlp_by_hand(module, x):
    """Linear -> ReLU -> Linear from the module's weights, without calling the module."""
    first, _, second = module.linear
    return torch.relu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias


def attention_by_hand(attn, hidden_states, key_input, value_input):
    """Softmax attention written out (einsum, no SDPA), then to_out."""
    batch, heads = hidden_states.shape[0], attn.heads

    def split_heads(t):
        return t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2)

    query, key, value = split_heads(attn.to_q(hidden_states)), split_heads(attn.to_k(key_input)), split_heads(attn.to_v(value_input))
    weights = torch.softmax(torch.einsum("bhid,bhjd->bhij", query, key) * attn.scale, dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", weights, value).transpose(1, 2).reshape(batch, -1, heads * query.shape[-1])
    return attn.to_out[0](out)


@pytest.fixture(scope="module")
def plain_output(unet, unet_inputs):
    """The UNet's output with no hypernetwork (computed once: UNet forwards are the slow part here)."""
    return unet_output(unet, unet_inputs)


@pytest.mark.parametrize("chain", ["one", "two chained"])
def test_layer_outputs_equal_hand_computed_reference(unet, unet_inputs, chain):
    first = make_hypernetwork("first", [32, 64], seed=1, activation="relu")
    second = make_hypernetwork("second", [64, 32], seed=2, activation="relu")
    hypernetworks = [(first, 0.7)] + ([(second, 1.3)] if chain == "two chained" else [])
    layers = {name: dict(unet.named_modules())[name] for name in (MID_SELF_ATTENTION, DOWN_CROSS_ATTENTION)}
    captured = {}

    def capture_for(name):
        def capture(module, args, kwargs, output):
            captured[name] = dict(hidden=args[0], context=kwargs.get("encoder_hidden_states"), output=output)
        return capture

    handles = [attn.register_forward_hook(capture_for(name), with_kwargs=True) for name, attn in layers.items()]
    try:
        with apply_hypernetworks(unet, hypernetworks):
            unet_output(unet, unet_inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert captured[MID_SELF_ATTENTION]["context"] is None  # self-attention: the context is the layer's input
    assert captured[DOWN_CROSS_ATTENTION]["context"].shape[-1] == 32  # cross-attention: the text
    for name, attn in layers.items():
        hidden = captured[name]["hidden"]
        context = hidden if captured[name]["context"] is None else captured[name]["context"]
        key_input, value_input = context, context
        for hypernetwork, strength in hypernetworks:
            key_module, value_module = hypernetwork.pair_for_width(context.shape[-1])
            key_input = key_input + mlp_by_hand(key_module, key_input) * strength
            value_input = value_input + mlp_by_hand(value_module, value_input) * strength
        with torch.no_grad():
            expected = attention_by_hand(attn, hidden, key_input, value_input)
            without = attention_by_hand(attn, hidden, context, context)
        assert torch.allclose(captured[name]["output"], expected, atol=1e-5, rtol=1e-4), name
        assert not torch.allclose(captured[name]["output"], without, atol=1e-3), name  # the hypernetwork did something


def test_strength_zero_and_a_zero_mlp_equal_no_hypernetwork_exactly(unet, unet_inputs, plain_output):
    hypernetwork = make_hypernetwork("h", [32, 64], seed=3)
    with apply_hypernetworks(unet, [(hypernetwork, 0.0)]) as report:
        assert len(report.layers) == 8  # installed everywhere, yet changes nothing
        assert torch.equal(unet_output(unet, unet_inputs), plain_output)
    silent = make_hypernetwork("silent", [32, 64], seed=3)
    with torch.no_grad():
        for width in silent.sizes:
            for module in silent.pair_for_width(width):
                module.linear[-1].weight.zero_()
    with apply_hypernetworks(unet, [(silent, 1.0)]):  # our processor's attention math is AttnProcessor2_0's, bit for bit
        assert torch.equal(unet_output(unet, unet_inputs), plain_output)


def test_removing_restores_the_unet_exactly_even_after_an_error(unet, unet_inputs, plain_output):
    before_processors = processors_of(unet)
    before_children = [name for name, _ in unet.named_modules()]
    hypernetwork = make_hypernetwork("h", [32, 64], seed=4)
    with pytest.raises(RuntimeError, match="boom"):
        with apply_hypernetworks(unet, [(hypernetwork, 1.0)]):
            assert all(processors_of(unet)[name] is not processor for name, processor in before_processors.items())
            raise RuntimeError("boom")
    after = processors_of(unet)
    assert after.keys() == before_processors.keys()
    assert all(after[name] is before_processors[name] for name in after)
    assert [name for name, _ in unet.named_modules()] == before_children
    assert torch.equal(unet_output(unet, unet_inputs), plain_output)


def test_fires_only_where_widths_match(unet, unet_inputs, plain_output):
    before = processors_of(unet)
    sd1_only = make_hypernetwork("sd1", [768, 320, 640, 1280], seed=5)
    with apply_hypernetworks(unet, [(sd1_only, 1.0)]) as report:
        assert report.layers == {} and report.unmatched == ["sd1"] and report.model_widths == [32, 64]
        assert "no module for this model's attention widths (32, 64)" in report.unmatched_messages()[0]
        assert all(processor is before[name] for name, processor in processors_of(unet).items())
        assert torch.equal(unet_output(unet, unet_inputs), plain_output)
    mid_only = make_hypernetwork("mid", [64], seed=6)
    with apply_hypernetworks(unet, [(mid_only, 1.0), (sd1_only, 1.0)]) as report:
        assert report.layers == {MID_SELF_ATTENTION: ["mid"]} and report.unmatched == ["sd1"]
        assert not torch.allclose(unet_output(unet, unet_inputs), plain_output, atol=1e-4)


def test_training_mode_ignores_strength_and_gradients_reach_the_hypernetwork(unet, unet_inputs, plain_output):
    hypernetwork = make_hypernetwork("t", [32, 64], seed=7)
    with apply_hypernetworks(unet, [(hypernetwork, 1.0)]):
        full_strength = unet_output(unet, unet_inputs)
    assert not torch.allclose(full_strength, plain_output, atol=1e-4)
    sample, timestep, text = unet_inputs
    hypernetwork.train()
    try:
        with apply_hypernetworks(unet, [(hypernetwork, 0.25)]):
            output = unet(sample, timestep, encoder_hidden_states=text).sample
            output.square().mean().backward()
    finally:
        hypernetwork.eval()
    assert torch.allclose(output.detach(), full_strength, atol=1e-6)
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in hypernetwork.parameters())
    assert all(parameter.grad is None for parameter in unet.parameters())


def test_txt2img_with_hypernet_tag_differs_and_leaves_the_model_as_it_was(tiny_pipe, tmp_path):
    from ti.hypernetwork import HypernetworkLibrary, save_hypernetwork_file
    from ti.infotext import parse_infotext

    model = LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                        device=torch.device("cpu"), dtype=torch.float32, is_demo=True)
    save_hypernetwork_file(make_hypernetwork("g", [32, 64], seed=8), tmp_path / "g.pt")
    save_hypernetwork_file(make_hypernetwork("sd1", [768], seed=8), tmp_path / "sd1.pt")
    library = HypernetworkLibrary(tmp_path)
    before = processors_of(tiny_pipe.unet)

    def generate(prompt):
        config = GenerateConfig(prompt=prompt, steps=1, width=64, height=64, seed=42)
        return txt2img(model, {}, config, hypernetworks=library)

    plain = generate("a tree")
    with_hn = generate("a tree <hypernet:g:1>")
    zero = generate("a tree <hypernet:g:0>")
    as_pixels = lambda result: np.asarray(result.images[0].image, dtype=np.int16)  # noqa: E731
    assert np.abs(as_pixels(with_hn) - as_pixels(plain)).max() > 8
    assert np.array_equal(as_pixels(zero), as_pixels(plain))
    assert with_hn.hypernetworks == [("g", 1.0)]
    assert parse_infotext(with_hn.images[0].infotext)[0] == "a tree <hypernet:g:1>"
    assert all(processor is before[name] for name, processor in processors_of(tiny_pipe.unet).items())
    unmatched = generate("a tree <hypernet:sd1>")
    assert unmatched.notes and "sd1" in unmatched.notes[0]
    with pytest.raises(ConfigError, match="nope"):
        generate("a tree <hypernet:nope>")


def test_apply_refuses_what_is_not_a_hypernetwork_pair(unet):
    with pytest.raises(ConfigError, match="expected \\(Hypernetwork, strength\\) pairs"):
        with apply_hypernetworks(unet, [("name", 1.0)]):
            pass
    with pytest.raises(ConfigError, match="finite"):
        with apply_hypernetworks(unet, [(make_hypernetwork("n", [32], seed=0), float("nan"))]):
            pass


TAGS = {
    "no tags": ("a cat", "a cat", []),
    "default strength": ("a cat <hypernet:anime>", "a cat ", [("anime", 1.0)]),
    "strength": ("<hypernet:anime:0.8>a cat", "a cat", [("anime", 0.8)]),
    "spaces everywhere": ("a < hypernet : my net : -0.5 > cat", "a  cat", [("my net", -0.5)]),
    "upper case": ("<HYPERNET:x:2>", "", [("x", 2.0)]),
    "chain, in order, repeats kept": ("<hypernet:a:1>, b <hypernet:b:.5> <hypernet:a>", ", b  ", [("a", 1.0), ("b", 0.5), ("a", 1.0)]),
    "other tags left alone": ("x <lora:thing:1> <hypernet:h>", "x <lora:thing:1> ", [("h", 1.0)]),
    "empty prompt": ("", "", []),
}


@pytest.mark.parametrize("case", TAGS, ids=list(TAGS))
def test_parse_hypernet_tags(case):
    prompt, remaining, requested = TAGS[case]
    assert parse_hypernet_tags(prompt) == (remaining, requested)


BAD_TAGS = {
    "bad strength": ("<hypernet:anime:strong>", "strength 'strong' in '<hypernet:anime:strong>' is not a number"),
    "infinite": ("<hypernet:anime:inf>", "not a finite number"),
    "no name": ("<hypernet: :0.5>", "has no name"),
    "too many parts": ("<hypernet:a:1:2>", "has 3 parts"),
}


@pytest.mark.parametrize("case", BAD_TAGS, ids=list(BAD_TAGS))
def test_bad_hypernet_tags(case):
    prompt, message = BAD_TAGS[case]
    with pytest.raises(ConfigError) as error:
        parse_hypernet_tags(prompt)
    assert error.value.field == "hypernet" and message in str(error.value)
