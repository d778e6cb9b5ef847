"""The hypernetwork itself: per-width pairs of small MLPs that rewrite attention's key/value input.

Built layer for layer as A1111 builds them (a1111-compat.md §8), so the `linear.<idx>` keys of
its files line up with ours: for each step i of the layer structure
    Linear(dim·a_i, dim·a_{i+1}); the activation (not for "linear", nor after the last Linear
    unless activate_output); LayerNorm when on; Dropout(p) when dropout_structure[i+1] > 0.

A quirk kept on purpose: the activation named "swish" is torch's Hardswish, not SiLU, because
A1111 maps it so; files that say "swish" were trained with Hardswish and must run with it. Ask
for "silu" to get x·sigmoid(x).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ti.errors import ConfigError

# A1111's table, then every activation class torch defines, lower-cased (a1111-compat.md §8).
_A1111_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,  # never instantiated: "linear" means no activation layer at all
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,  # A1111's quirk, kept for file compatibility (see module docstring)
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
ACTIVATIONS: dict[str, type[nn.Module]] = {
    **_A1111_ACTIVATIONS,
    **{
        class_name.lower(): activation_class
        for class_name, activation_class in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
        if activation_class.__module__ == "torch.nn.modules.activation"
    },
}
# A1111's create form hides these two; the others that need constructor arguments cannot be built.
_HIDDEN_FROM_CREATE_FORM = ("hardswish", "multiheadattention")

WEIGHT_INITS = ("Normal", "KaimingUniform", "KaimingNormal", "XavierUniform", "XavierNormal")
DEFAULT_LAYER_STRUCTURE = (1.0, 2.0, 1.0)
DEFAULT_DROPOUT_P = 0.3  # what A1111 fills in when a file says use_dropout but has no structure
NORMAL_INIT_STD = 0.01


def _activation_builds_without_arguments(name: str) -> bool:
    try:
        ACTIVATIONS[name]()
    except TypeError:  # e.g. Threshold(threshold, value), MultiheadAttention(embed_dim, heads)
        return False
    return True


def create_form_activations() -> list[str]:
    """Activation names for a create form: A1111's list (linear first), minus what it hides or cannot build."""
    return [name for name in ACTIVATIONS if name not in _HIDDEN_FROM_CREATE_FORM and _activation_builds_without_arguments(name)]


def default_dropout_structure(layer_structure: Sequence[float], use_dropout: bool, last_layer_dropout: bool,
                              dropout_p: float = DEFAULT_DROPOUT_P) -> list[float]:
    """A1111's dropout structure for files that have none: zeros, or with dropout on
    `[0] + [p]*(n-3) + [p if last_layer_dropout else 0] + [0]`.
    """
    count = len(layer_structure)
    if not use_dropout:
        return [0.0] * count
    return [0.0] + [dropout_p] * (count - 3) + [dropout_p if last_layer_dropout else 0.0] + [0.0]


def parse_number_list(text: str, field: str) -> list[float]:
    """`"1, 2, 1"` -> [1.0, 2.0, 1.0] (pure; for CLI flags and form boxes).

    Raises:
        ConfigError(field): an empty list or an item that is not a finite number (quoted).
    """
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ConfigError(field, f"expected numbers separated by commas, got {text!r}")
    numbers = []
    for item in items:
        try:
            number = float(item)
        except ValueError:
            raise ConfigError(field, f"{item!r} in {text!r} is not a number") from None
        if not math.isfinite(number):
            raise ConfigError(field, f"{item!r} in {text!r} is not a finite number")
        numbers.append(number)
    return numbers


def parse_dropout_structure(text: str, layer_structure: Sequence[float], field: str = "dropout structure") -> list[float]:
    """`"0, 0.3, 0"` -> [0.0, 0.3, 0.0] (pure; for CLI flags and form boxes).

    Raises:
        ConfigError(field): not numbers, or (with one entry per layer structure entry) a first or
        last entry that is not 0: no dropout on the input or the output.
    """
    dropout_structure = parse_number_list(text, field)
    if len(dropout_structure) == len(layer_structure) and (dropout_structure[0] != 0 or dropout_structure[-1] != 0):
        raise ConfigError(field, f"must start and end with 0 (no dropout on the input or the output), got {text!r}")
    return dropout_structure


def parse_sizes(text: str) -> list[int]:
    """`"768, 320, 640, 1280"` -> [768, 320, 640, 1280]: the context widths to make module pairs for.

    Raises:
        ConfigError("sizes"): not positive whole numbers, or a width given twice.
    """
    sizes = []
    for number in parse_number_list(text, "sizes"):
        if number != int(number) or number < 1:
            raise ConfigError("sizes", f"widths are positive whole numbers, got {number:g} in {text!r}")
        sizes.append(int(number))
    return check_sizes(sizes)


def check_sizes(sizes: Iterable[int]) -> list[int]:
    """The widths as a list, checked: positive ints, none twice, at least one."""
    sizes = list(sizes)
    if not sizes:
        raise ConfigError("sizes", "give at least one width (768 for SD1 text, 1024 for SD2; 320, 640, 1280 for SD1/SD2 self-attention)")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("sizes", f"widths are positive whole numbers, got {size!r}")
    repeated = sorted({size for size in sizes if sizes.count(size) > 1})
    if repeated:
        raise ConfigError("sizes", f"width {repeated[0]} is given more than once")
    return sizes


@dataclass(frozen=True)
class HypernetworkStructure:
    """How each MLP of a hypernetwork is built; the same for every width. Defaults are A1111's create form.

    Attributes:
        layer_structure: width multipliers, e.g. (1, 2, 1): Linear(d, 2d) then Linear(2d, d).
            Floats allowed; must start and end with 1.
        activation: a key of ACTIVATIONS ("linear" = none). Case-insensitive; None means "linear".
        weight_init: one of WEIGHT_INITS (case-insensitive).
        layer_norm: a LayerNorm after each Linear (and its activation).
        use_dropout: stored in files; dropout layers come from dropout_structure alone.
        dropout_structure: one probability per layer_structure entry, each in [0, 1); entry i+1
            > 0 puts Dropout after step i. None: A1111's default for use_dropout (no last-layer dropout).
        activate_output: also put the activation after the last Linear (A1111 creates with False;
            files without the key mean True).
    """

    layer_structure: tuple[float, ...] = DEFAULT_LAYER_STRUCTURE
    activation: str | None = "linear"
    weight_init: str = "Normal"
    layer_norm: bool = False
    use_dropout: bool = False
    dropout_structure: tuple[float, ...] | None = None
    activate_output: bool = False

    def __post_init__(self):
        def set_field(name: str, value) -> None:  # the dataclass is frozen: normalise once, here
            object.__setattr__(self, name, value)

        layer_structure = tuple(float(value) for value in self.layer_structure)
        if len(layer_structure) < 2 or any(not math.isfinite(value) or value <= 0 for value in layer_structure):
            raise ConfigError("layer structure", f"expected at least two positive numbers, got {list(self.layer_structure)}")
        if layer_structure[0] != 1 or layer_structure[-1] != 1:
            raise ConfigError("layer structure", f"must start and end with 1 (the MLP maps a width back to itself), got {list(self.layer_structure)}")
        set_field("layer_structure", layer_structure)

        activation = "linear" if self.activation is None else str(self.activation).strip().lower()
        if activation not in ACTIVATIONS:
            raise ConfigError("activation", f"unknown activation {self.activation!r}; expected one of {', '.join(create_form_activations())}")
        if activation != "linear" and not _activation_builds_without_arguments(activation):
            raise ConfigError("activation", f"{self.activation!r} needs constructor arguments that hypernetworks never give")
        set_field("activation", activation)

        inits_by_lower = {name.lower(): name for name in WEIGHT_INITS}
        weight_init = inits_by_lower.get(str(self.weight_init).strip().lower())
        if weight_init is None:
            raise ConfigError("weight initialization", f"unknown {self.weight_init!r}; expected one of {', '.join(WEIGHT_INITS)}")
        set_field("weight_init", weight_init)

        if self.dropout_structure is None:
            dropout_structure = tuple(default_dropout_structure(layer_structure, self.use_dropout, last_layer_dropout=False))
        else:
            dropout_structure = tuple(float(value) for value in self.dropout_structure)
        if len(dropout_structure) != len(layer_structure):
            raise ConfigError("dropout structure", f"needs one value per layer structure entry ({len(layer_structure)}), got {list(self.dropout_structure)}")
        if any(not 0 <= value < 1 for value in dropout_structure):
            raise ConfigError("dropout structure", f"each value is a probability in [0, 1), got {list(self.dropout_structure)}")
        set_field("dropout_structure", dropout_structure)
        set_field("layer_norm", bool(self.layer_norm))
        set_field("use_dropout", bool(self.use_dropout))
        set_field("activate_output", bool(self.activate_output))

    @property
    def last_layer_dropout(self) -> bool:
        """What A1111 stores as `last_layer_dropout`: dropout after the second-to-last Linear."""
        return self.dropout_structure[-2] != 0


def _linear_without_init(in_features: int, out_features: int) -> nn.Linear:
    # Built uninitialised (no draws from torch's global RNG); weights come from initialize() or a file.
    return torch.nn.utils.skip_init(nn.Linear, in_features, out_features)


class HypernetworkModule(nn.Module):
    """One MLP (the key side or the value side) for one context width: x -> x + MLP(x)·m.

    Its Sequential is called `linear`, so state-dict keys are A1111's `linear.<idx>.weight/bias`.
    """

    def __init__(self, width: int, structure: HypernetworkStructure):
        """Build the layers; weights are left uninitialised for initialize() or load_state_dict().

        Raises:
            ConfigError("layer structure"): a multiplier that makes a layer 0 wide at this width.
        """
        super().__init__()
        multipliers = structure.layer_structure
        layers: list[nn.Module] = []
        for step in range(len(multipliers) - 1):
            in_width, out_width = int(width * multipliers[step]), int(width * multipliers[step + 1])
            if in_width < 1 or out_width < 1:
                raise ConfigError("layer structure", f"{list(multipliers)} makes a 0-wide layer at width {width}")
            layers.append(_linear_without_init(in_width, out_width))
            is_last_step = step == len(multipliers) - 2
            if structure.activation != "linear" and not (is_last_step and not structure.activate_output):
                layers.append(ACTIVATIONS[structure.activation]())
            if structure.layer_norm:
                layers.append(nn.LayerNorm(out_width))
            if structure.dropout_structure[step + 1] > 0:
                layers.append(nn.Dropout(p=structure.dropout_structure[step + 1]))
        self.linear = nn.Sequential(*layers)

    @torch.no_grad()
    def initialize(self, weight_init: str, activation: str, generator: torch.Generator | None = None) -> None:
        """Fresh weights as A1111 makes them.

        Normal: weights ~ N(0, 0.01), biases 0. Xavier/Kaiming Uniform/Normal for Linear weights
        (Kaiming with leaky_relu gain for leakyrelu, relu otherwise), biases 0. LayerNorm weights
        always get N(0, 0.01) and biases 0, whatever the choice (A1111 does this; a near-zero
        LayerNorm gain makes a fresh hypernetwork start close to identity).
        """
        nonlinearity = "leaky_relu" if activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if not isinstance(layer, (nn.Linear, nn.LayerNorm)):
                continue  # activations with parameters (PReLU) keep torch's defaults, as in A1111
            if weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
                nn.init.normal_(layer.weight, mean=0.0, std=NORMAL_INIT_STD, generator=generator)
            elif weight_init == "XavierUniform":
                nn.init.xavier_uniform_(layer.weight, generator=generator)
            elif weight_init == "XavierNormal":
                nn.init.xavier_normal_(layer.weight, generator=generator)
            elif weight_init == "KaimingUniform":
                nn.init.kaiming_uniform_(layer.weight, nonlinearity=nonlinearity, generator=generator)
            elif weight_init == "KaimingNormal":
                nn.init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity, generator=generator)
            else:
                raise ConfigError("weight initialization", f"unknown {weight_init!r}; expected one of {', '.join(WEIGHT_INITS)}")
            nn.init.zeros_(layer.bias)

    def forward(self, context: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        """context + MLP(context)·multiplier; the multiplier counts only in eval mode (training uses 1, as A1111)."""
        return context + self.linear(context) * (1.0 if self.training else multiplier)


class Hypernetwork(nn.Module):
    """Module pairs (key MLP, value MLP) keyed by context width, plus what A1111 files record.

    Starts in eval mode (dropout off, multiplier counts). Parameters are float32 whatever the
    UNet's precision: the processor runs the MLPs in float32 and casts back, as A1111 does.

    Attributes:
        name: the name you use in prompts (`<hypernet:name>`): the file stem once loaded.
        structure: how every MLP is built.
        step: training steps done (0 for a new one).
        checkpoint_hash, checkpoint_name: A1111's sd_checkpoint / sd_checkpoint_name (or None).
        optional_info: free text A1111 files may carry (or None).
        stored_name: the `name` a loaded file stored (may differ from the stem), else None.
        source_path, sha256: the file it was loaded from and its full sha256, else None.
    """

    def __init__(self, name: str, sizes: Iterable[int], structure: HypernetworkStructure | None = None, *,
                 step: int = 0, checkpoint_hash: str | None = None, checkpoint_name: str | None = None,
                 optional_info: str | None = None, initialize: bool = True, generator: torch.Generator | None = None):
        """Args:
            name: see the class attributes.
            sizes: context widths to make a pair for (768, 320, 640, 1280 for SD1).
            structure: how each MLP is built (A1111's create defaults when None).
            initialize: draw fresh weights (False when the caller loads a state dict next).
            generator: RNG for the fresh weights (torch's global RNG when None).
        Raises:
            ConfigError: bad sizes or a structure that does not fit a width.
        """
        super().__init__()
        self.name = name
        self.structure = structure or HypernetworkStructure()
        self.step = int(step)
        self.checkpoint_hash = checkpoint_hash
        self.checkpoint_name = checkpoint_name
        self.optional_info = optional_info
        self.stored_name: str | None = None
        self.source_path = None
        self.sha256: str | None = None
        self.pairs = nn.ModuleDict()
        for width in check_sizes(sizes):
            key_module, value_module = HypernetworkModule(width, self.structure), HypernetworkModule(width, self.structure)
            if initialize:
                for module in (key_module, value_module):
                    module.initialize(self.structure.weight_init, self.structure.activation, generator)
            self.pairs[str(width)] = nn.ModuleList([key_module, value_module])
        self.eval()

    @property
    def sizes(self) -> list[int]:
        """The context widths this hypernetwork has module pairs for, in file order."""
        return [int(width) for width in self.pairs.keys()]

    @property
    def shorthash(self) -> str | None:
        """A1111's hypernetwork hash: the first 10 hex digits of the file's sha256 (None if unsaved)."""
        return self.sha256[:10] if self.sha256 else None

    def pair_for_width(self, width: int) -> tuple[HypernetworkModule, HypernetworkModule] | None:
        """The (key, value) modules for contexts `width` wide, or None: then this hypernetwork does not fire there."""
        pair = self.pairs[str(width)] if str(width) in self.pairs else None
        return None if pair is None else (pair[0], pair[1])

    def transform_context(self, key_context: torch.Tensor, value_context: torch.Tensor,
                          multiplier: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One link of A1111's chain: k + MLP_k(k)·m, v + MLP_v(v)·m, picked by the last dimension.

        The MLPs run in float32 and their output is cast back to the context's dtype (A1111's
        cond_cast_float / cond_cast_unet), so fp16 UNets keep fp16 activations.
        """
        pair = self.pair_for_width(key_context.shape[-1])
        if pair is None:
            return key_context, value_context
        key_module, value_module = pair
        new_key = key_module(key_context.float(), multiplier).to(key_context.dtype)
        new_value = value_module(value_context.float(), multiplier).to(value_context.dtype)
        return new_key, new_value

    def extra_repr(self) -> str:
        structure = self.structure
        return (f"name={self.name!r}, sizes={self.sizes}, layer_structure={list(structure.layer_structure)}, "
                f"activation={structure.activation!r}, step={self.step}")
