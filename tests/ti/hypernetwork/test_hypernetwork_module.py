"""The MLPs: layer sequences as A1111 builds them, initialisations, forward, validation, list parsers."""

import math

import pytest
import torch
from torch import nn

from ti.errors import ConfigError
from ti.hypernetwork import (
    ACTIVATIONS,
    Hypernetwork,
    HypernetworkModule,
    HypernetworkStructure,
    create_form_activations,
    default_dropout_structure,
    parse_number_list,
    parse_sizes,
)


def layer_kinds(module: HypernetworkModule) -> list[str]:
    """Each layer as a short string: Linear(in,out), Dropout(p), or the class name."""
    kinds = []
    for layer in module.linear:
        if isinstance(layer, nn.Linear):
            kinds.append(f"Linear({layer.in_features},{layer.out_features})")
        elif isinstance(layer, nn.Dropout):
            kinds.append(f"Dropout({layer.p:g})")
        elif isinstance(layer, nn.LayerNorm):
            kinds.append(f"LayerNorm({layer.normalized_shape[0]})")
        else:
            kinds.append(type(layer).__name__)
    return kinds


LAYER_SEQUENCES = {
    "defaults: linear 1,2,1": (8, {}, ["Linear(8,16)", "Linear(16,8)"]),
    "relu, no activation after the output": (8, {"activation": "relu"}, ["Linear(8,16)", "ReLU", "Linear(16,8)"]),
    "relu with activate_output": (8, {"activation": "relu", "activate_output": True}, ["Linear(8,16)", "ReLU", "Linear(16,8)", "ReLU"]),
    "swish is Hardswish (A1111)": (8, {"activation": "swish"}, ["Linear(8,16)", "Hardswish", "Linear(16,8)"]),
    "silu is SiLU": (8, {"activation": "SiLU"}, ["Linear(8,16)", "SiLU", "Linear(16,8)"]),
    "torch class lower-cased": (8, {"activation": "gelu"}, ["Linear(8,16)", "GELU", "Linear(16,8)"]),
    "layer norm after the activation": (8, {"activation": "tanh", "layer_norm": True},
                                        ["Linear(8,16)", "Tanh", "LayerNorm(16)", "Linear(16,8)", "LayerNorm(8)"]),
    "dropout on, default structure": (8, {"layer_structure": (1, 2, 2, 1), "use_dropout": True},
                                      ["Linear(8,16)", "Dropout(0.3)", "Linear(16,16)", "Linear(16,8)"]),
    "explicit dropout structure": (8, {"layer_structure": (1, 2, 2, 1), "activation": "elu", "use_dropout": True,
                                       "dropout_structure": (0, 0.1, 0.2, 0)},
                                   ["Linear(8,16)", "ELU", "Dropout(0.1)", "Linear(16,16)", "ELU", "Dropout(0.2)", "Linear(16,8)"]),
    "everything": (4, {"layer_structure": (1, 2, 1), "activation": "sigmoid", "layer_norm": True, "activate_output": True,
                       "dropout_structure": (0, 0.5, 0)},
                   ["Linear(4,8)", "Sigmoid", "LayerNorm(8)", "Dropout(0.5)", "Linear(8,4)", "Sigmoid", "LayerNorm(4)"]),
    "float multipliers": (10, {"layer_structure": (1, 1.5, 1)}, ["Linear(10,15)", "Linear(15,10)"]),
}


@pytest.mark.parametrize("case", LAYER_SEQUENCES, ids=list(LAYER_SEQUENCES))
def test_layer_sequence(case):
    width, settings, expected = LAYER_SEQUENCES[case]
    assert layer_kinds(HypernetworkModule(width, HypernetworkStructure(**settings))) == expected


def test_activation_table_is_a1111s():
    assert ACTIVATIONS["swish"] is nn.Hardswish and ACTIVATIONS["hardswish"] is nn.Hardswish
    assert ACTIVATIONS["linear"] is nn.Identity and ACTIVATIONS["leakyrelu"] is nn.LeakyReLU
    assert ACTIVATIONS["prelu"] is nn.PReLU and ACTIVATIONS["mish"] is nn.Mish
    choices = create_form_activations()
    assert choices[:7] == ["linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid"]
    assert "hardswish" not in choices and "multiheadattention" not in choices and "threshold" not in choices


def test_default_dropout_structure_is_a1111s():
    assert default_dropout_structure([1, 2, 1], False, True) == [0, 0, 0]
    assert default_dropout_structure([1, 2, 1], True, False) == [0, 0, 0]
    assert default_dropout_structure([1, 2, 1], True, True) == [0, 0.3, 0]
    assert default_dropout_structure([1, 2, 2, 1], True, False) == [0, 0.3, 0, 0]
    assert default_dropout_structure([1, 2, 2, 1], True, True) == [0, 0.3, 0.3, 0]
    assert HypernetworkStructure(layer_structure=(1, 2, 2, 1), dropout_structure=(0, 0.3, 0.3, 0)).last_layer_dropout


def linears_and_norms(hypernetwork):
    return [layer for module in hypernetwork.modules() if isinstance(module, HypernetworkModule)
            for layer in module.linear if isinstance(layer, (nn.Linear, nn.LayerNorm))]


def test_normal_init_is_n_0_001_with_zero_biases():
    hypernetwork = Hypernetwork("n", [256], HypernetworkStructure(layer_norm=True), generator=torch.Generator().manual_seed(0))
    for layer in linears_and_norms(hypernetwork):
        samples = layer.weight.numel()  # 131072 for the Linears, 256 or 512 for the LayerNorms
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05 if samples > 10000 else 0.2)
        assert layer.weight.mean().abs().item() < 5 * 0.01 / math.sqrt(samples)


@pytest.mark.parametrize("weight_init", ["XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal"])
def test_xavier_and_kaiming_inits(weight_init):
    structure = HypernetworkStructure(weight_init=weight_init, activation="relu", layer_norm=True)
    hypernetwork = Hypernetwork("x", [128], structure, generator=torch.Generator().manual_seed(0))
    linear = hypernetwork.pair_for_width(128)[0].linear[0]  # Linear(128, 256)
    fan_in, fan_out = 128, 256
    expected_std = math.sqrt(2 / (fan_in + fan_out)) if weight_init.startswith("Xavier") else math.sqrt(2 / fan_in)
    assert linear.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    if weight_init.endswith("Uniform"):
        assert linear.weight.abs().max().item() <= expected_std * math.sqrt(3) + 1e-6
    for layer in linears_and_norms(hypernetwork):
        assert torch.count_nonzero(layer.bias) == 0
        if isinstance(layer, nn.LayerNorm):  # A1111: LayerNorm weights get N(0, 0.01) whatever the choice
            assert layer.weight.std().item() == pytest.approx(0.01, rel=0.2)


def test_seeded_init_is_repeatable_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    first = Hypernetwork("a", [16, 32], generator=torch.Generator().manual_seed(3))
    second = Hypernetwork("a", [16, 32], generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_forward_adds_scaled_mlp_in_eval_and_ignores_multiplier_in_training():
    module = HypernetworkModule(4, HypernetworkStructure())
    module.initialize("XavierNormal", "linear", torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 4)
    mlp = module.linear(x)
    module.eval()
    assert torch.allclose(module(x, 0.5), x + 0.5 * mlp)
    module.train()
    assert torch.allclose(module(x, 0.5), x + mlp)


def test_new_hypernetwork_is_in_eval_mode_with_sizes_in_order():
    hypernetwork = Hypernetwork("h", [768, 320, 640, 1280])
    assert not hypernetwork.training and hypernetwork.sizes == [768, 320, 640, 1280]
    assert hypernetwork.pair_for_width(1024) is None
    key_module, value_module = hypernetwork.pair_for_width(320)
    assert key_module is not value_module


BAD_STRUCTURES = {
    "does not start with 1": ({"layer_structure": (2, 1)}, "layer structure", "start and end with 1"),
    "does not end with 1": ({"layer_structure": (1, 2)}, "layer structure", "start and end with 1"),
    "too short": ({"layer_structure": (1,)}, "layer structure", "at least two"),
    "zero multiplier": ({"layer_structure": (1, 0, 1)}, "layer structure", "positive"),
    "unknown activation": ({"activation": "wobble"}, "activation", "'wobble'"),
    "activation needing arguments": ({"activation": "threshold"}, "activation", "arguments"),
    "unknown init": ({"weight_init": "Zeros"}, "weight initialization", "'Zeros'"),
    "dropout length": ({"dropout_structure": (0, 0.3)}, "dropout structure", "one value per"),
    "dropout of 1": ({"dropout_structure": (0, 1, 0)}, "dropout structure", "[0, 1)"),
}


@pytest.mark.parametrize("case", BAD_STRUCTURES, ids=list(BAD_STRUCTURES))
def test_bad_structures_are_refused(case):
    settings, field, text = BAD_STRUCTURES[case]
    with pytest.raises(ConfigError) as error:
        HypernetworkStructure(**settings)
    assert error.value.field == field and text in str(error.value)


@pytest.mark.parametrize("text, expected", [("1,2,1", [1, 2, 1]), (" 1 , 1.5 ,1 ", [1, 1.5, 1]), ("0, 0.3, 0", [0, 0.3, 0])])
def test_parse_number_list(text, expected):
    assert parse_number_list(text, "layers") == expected


@pytest.mark.parametrize("text, quoted", [("1,two,1", "'two'"), ("", "''"), ("1,,1", "''"), ("1,inf,1", "'inf'")])
def test_parse_number_list_refuses(text, quoted):
    with pytest.raises(ConfigError, match=quoted):
        parse_number_list(text, "layers")


@pytest.mark.parametrize("text, expected", [("768,320,640,1280", [768, 320, 640, 1280]), ("32, 64", [32, 64]), ("1024", [1024])])
def test_parse_sizes(text, expected):
    assert parse_sizes(text) == expected


@pytest.mark.parametrize("text, message", [("768,768", "more than once"), ("32.5", "whole numbers"), ("0", "whole numbers"), ("a", "'a'")])
def test_parse_sizes_refuses(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_sizes(text)
