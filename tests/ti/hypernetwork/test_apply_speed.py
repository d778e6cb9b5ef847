"""The text-context cache: the same bits as computing every time, fresh results whenever an input
changes, and never in training."""

import pytest
import torch

from ti.hypernetwork import Hypernetwork, HypernetworkStructure, apply_hypernetworks, chain_hypernetworks
from ti.hypernetwork.apply import TextContextCache

# In the demo UNet: cross-attention on the 32-wide text; self-attention at 32 and 64 channels.
DOWN_CROSS_ATTENTION = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"


def make_hypernetwork(name, sizes, seed, **settings):
    """Xavier-initialised so the effect is large enough to see (A1111's Normal init is near identity)."""
    structure = HypernetworkStructure(**{"weight_init": "XavierNormal", "activation": "relu", **settings})
    return Hypernetwork(name, sizes, structure, generator=torch.Generator().manual_seed(seed))


def text_context(seed, width=32):
    return torch.randn(2, 77, width, generator=torch.Generator().manual_seed(seed))


def assert_same_bits(actual, expected):
    assert actual[0].dtype == expected[0].dtype and actual[1].dtype == expected[1].dtype
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])


@pytest.fixture
def chain():
    return [(make_hypernetwork("a", [32], seed=1), 0.8), (make_hypernetwork("b", [32], seed=2), 1.3)]


def test_reuses_the_result_for_the_same_context_and_it_is_the_same_bits(chain):
    cache, context = TextContextCache(), text_context(0)
    with torch.no_grad():
        expected = chain_hypernetworks(chain, context)
        first = cache.key_and_value_inputs(chain, context)
        again = cache.key_and_value_inputs(chain, context)  # same object
        equal_copy = cache.key_and_value_inputs(chain, context.clone())  # another object, same bits
    assert_same_bits(first, expected)
    assert again[0] is first[0] and again[1] is first[1] and equal_copy[0] is first[0]
    assert (cache.hits, cache.misses) == (2, 1)
    assert not torch.equal(first[0], context) and not torch.equal(first[0], first[1])  # the chain did something


def test_a_changed_context_gives_fresh_results(chain):
    cache, context = TextContextCache(), text_context(0)
    with torch.no_grad():
        cache.key_and_value_inputs(chain, context)
        other = text_context(1)
        assert_same_bits(cache.key_and_value_inputs(chain, other), chain_hypernetworks(chain, other))
        context[0, 0, 0] += 1.0  # in place: the same object, a new version
        assert_same_bits(cache.key_and_value_inputs(chain, context), chain_hypernetworks(chain, context))
        signed_zero = torch.zeros(2, 77, 32)
        cache.key_and_value_inputs(chain, signed_zero)
        negative_zero = -signed_zero  # equal as numbers, not as bits
        assert_same_bits(cache.key_and_value_inputs(chain, negative_zero), chain_hypernetworks(chain, negative_zero))
        longer = text_context(0)[:, :40]
        assert_same_bits(cache.key_and_value_inputs(chain, longer), chain_hypernetworks(chain, longer))
    assert (cache.hits, cache.misses) == (0, 6)


CHANGES = ["in-place step", "load_state_dict", "data replaced", "strength", "order", "other hypernetwork"]


@pytest.mark.parametrize("change", CHANGES)
def test_changed_weights_strength_or_chain_give_fresh_results(chain, change):
    cache, context = TextContextCache(), text_context(0)
    first_module = chain[0][0].pair_for_width(32)[0]
    with torch.no_grad():
        before = cache.key_and_value_inputs(chain, context)
        if change == "in-place step":
            first_module.linear[0].weight.add_(0.01)  # what an optimizer step does
        elif change == "load_state_dict":
            first_module.load_state_dict(make_hypernetwork("x", [32], seed=9).pair_for_width(32)[0].state_dict())
        elif change == "data replaced":
            first_module.linear[0].weight.data = first_module.linear[0].weight.data * 1.5
        elif change == "strength":
            chain = [(chain[0][0], 0.5), chain[1]]
        elif change == "order":
            chain = chain[::-1]
        else:
            chain = [(make_hypernetwork("a", [32], seed=3), 0.8), chain[1]]
        after = cache.key_and_value_inputs(chain, context)
        assert_same_bits(after, chain_hypernetworks(chain, context))
    assert not torch.equal(after[0], before[0])
    assert cache.misses == 2


def test_training_or_gradients_never_use_the_cache(chain):
    cache, context = TextContextCache(), text_context(0)
    with torch.no_grad():
        cache.key_and_value_inputs(chain, context)  # stored, in eval mode
    chain[0][0].train()
    try:
        with torch.no_grad():
            for _ in range(2):
                in_training = cache.key_and_value_inputs(chain, context)
    finally:
        chain[0][0].eval()
    assert (cache.hits, cache.misses) == (0, 1)  # neither looked up nor stored
    key_input, value_input = cache.key_and_value_inputs(chain, context)  # grad mode on, eval mode
    (key_input.sum() + value_input.sum()).backward()
    assert (cache.hits, cache.misses) == (0, 1)
    assert all(parameter.grad is not None for hypernetwork, _ in chain for parameter in hypernetwork.parameters())
    dropout = make_hypernetwork("d", [32], seed=4, dropout_structure=(0, 0.5, 0))
    dropout.train()
    with torch.no_grad():
        draws = [cache.key_and_value_inputs([(dropout, 1.0)], context)[0] for _ in range(2)]
    assert not torch.equal(draws[0], draws[1])  # dropout drew twice
    assert not torch.equal(in_training[0], chain_hypernetworks(chain, context)[0])  # strength 1 in training, 0.8 in eval


def test_keeps_at_most_size_results_least_recently_used_first(chain):
    cache = TextContextCache(size=2)
    contexts = [text_context(seed) for seed in range(3)]
    with torch.no_grad():
        for context in (contexts[0], contexts[1], contexts[0], contexts[2]):  # 1 is the oldest when 2 comes
            cache.key_and_value_inputs(chain, context)
        assert (cache.hits, cache.misses) == (1, 3)
        cache.key_and_value_inputs(chain, contexts[0])
        cache.key_and_value_inputs(chain, contexts[1])
    assert (cache.hits, cache.misses) == (2, 4)
    with pytest.raises(ValueError, match="at least 1"):
        TextContextCache(size=0)


def test_inference_mode_and_half_precision_contexts(chain):
    cache = TextContextCache()
    with torch.inference_mode():
        context = text_context(0)  # an inference tensor: no version counter, recognised by its bits
        first = cache.key_and_value_inputs(chain, context)
        assert cache.key_and_value_inputs(chain, context)[0] is first[0]
        half = text_context(1).to(torch.bfloat16)
        assert_same_bits(cache.key_and_value_inputs(chain, half), chain_hypernetworks(chain, half))
        assert cache.key_and_value_inputs(chain, half)[0].dtype == torch.bfloat16
    assert (cache.hits, cache.misses) == (2, 2)


def cross_attention_processor(unet):
    return dict(unet.named_modules())[DOWN_CROSS_ATTENTION].processor


def test_denoising_steps_give_the_same_bits_with_and_without_the_cache(tiny_pipe):
    """Several UNet calls with one text context, as a sampler makes them: the cache computes the
    text side once for all cross-attention layers and steps, and the outputs are unchanged."""
    unet = tiny_pipe.unet
    hypernetworks = [(make_hypernetwork("g", [32, 64], seed=5), 0.7), (make_hypernetwork("h", [32], seed=6), 1.2)]
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(2, 77, 32, generator=generator)
    steps = [(torch.randn(2, 4, 8, 8, generator=generator), torch.tensor(timestep)) for timestep in (900, 500, 100)]

    def denoise(cache_text_context):
        with torch.no_grad(), apply_hypernetworks(unet, hypernetworks, cache_text_context=cache_text_context):
            outputs = [unet(sample, timestep, encoder_hidden_states=text).sample for sample, timestep in steps]
            return outputs, cross_attention_processor(unet).text_context_cache

    uncached, no_cache = denoise(False)
    cached, cache = denoise(True)
    assert no_cache is None
    assert all(torch.equal(with_cache, without) for with_cache, without in zip(cached, uncached))
    cross_layers = sum(name.endswith("attn2") for name, _ in unet.named_modules())
    assert cache.misses == 1 and cache.hits == len(steps) * cross_layers - 1
    with torch.no_grad():
        plain = unet(*steps[0], encoder_hidden_states=text).sample
    assert not torch.allclose(cached[0], plain, atol=1e-4)  # the hypernetworks did something


def test_generation_with_a_hypernet_tag_is_unchanged_by_the_cache(tiny_pipe, tmp_path, monkeypatch):
    """txt2img end to end: the same pixels with the cache as without it."""
    import numpy as np

    import ti.generate
    from ti.config import GenerateConfig
    from ti.hypernetwork import HypernetworkLibrary, save_hypernetwork_file
    from ti.pipeline import LoadedModel, demo_sha256

    model = LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                        device=torch.device("cpu"), dtype=torch.float32, is_demo=True)
    save_hypernetwork_file(make_hypernetwork("g", [32, 64], seed=8), tmp_path / "g.pt")
    library = HypernetworkLibrary(tmp_path)
    config = GenerateConfig(prompt="a tree <hypernet:g:0.9>", steps=3, width=64, height=64, seed=42)
    pixels = lambda: np.asarray(ti.generate.txt2img(model, {}, config, hypernetworks=library).images[0].image)  # noqa: E731
    cached = pixels()
    monkeypatch.setattr(ti.generate, "apply_hypernetworks",
                        lambda unet, pairs: apply_hypernetworks(unet, pairs, cache_text_context=False))
    assert np.array_equal(cached, pixels())
