"""Hypernetworks at generation and training time: `<hypernet:name:0.8>` tags, and the attention
processor that rewrites key/value inputs exactly where A1111's fire (a1111-compat.md §8).

In every UNet attention layer the context is the text (cross-attention, `encoder_hidden_states`)
or the image features themselves (self-attention, `hidden_states`). A hypernetwork fires in a
layer when it has a module pair for the context's width: in SD1, 768 is the text and 320/640/1280
are self-attention; in SD2 the text is 1024. A hypernetwork whose widths match no layer (a
768-only one on a 1024 model, or any SD1 one on the 32-wide demo) changes nothing; the report
from apply_hypernetworks says so, so the UI can show it.

The text context is the same at every denoising step and in every cross-attention layer, so
in eval mode without gradients the chain's result for it is computed once per `with` block and
reused (TextContextCache); self-attention contexts change every call and are always computed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ti.errors import ConfigError
from ti.hypernetwork.module import Hypernetwork, HypernetworkModule

# `<hypernet:name>` or `<hypernet:name:strength>`; spaces around any part are allowed.
_HYPERNET_TAG = re.compile(r"<\s*hypernet\s*:([^<>]*)>", re.IGNORECASE)
DEFAULT_STRENGTH = 1.0


def parse_hypernet_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Take `<hypernet:name:strength>` tags out of a prompt (pure).

    Each tag is replaced by nothing, as A1111 does; other `<...>` tags are left for their own
    parsers. Several tags chain in the order written; a name given twice applies twice.

    Args:
        prompt: the prompt text.
    Returns:
        (the prompt without hypernet tags, [(name, strength), ...]); strength defaults to 1.0.
    Raises:
        ConfigError("hypernet"): an empty name, a strength that is not a finite number, or
        more than name and strength; the message quotes the tag.
    """
    requested: list[tuple[str, float]] = []

    def take_tag(match: re.Match) -> str:
        tag = match.group(0)
        parts = [part.strip() for part in match.group(1).split(":")]
        if not parts[0]:
            raise ConfigError("hypernet", f"{tag!r} has no name; write <hypernet:name> or <hypernet:name:0.8>")
        if len(parts) > 2:
            raise ConfigError("hypernet", f"{tag!r} has {len(parts)} parts; expected <hypernet:name> or <hypernet:name:strength>")
        strength = DEFAULT_STRENGTH
        if len(parts) == 2:
            try:
                strength = float(parts[1])
            except ValueError:
                raise ConfigError("hypernet", f"strength {parts[1]!r} in {tag!r} is not a number") from None
            if not math.isfinite(strength):
                raise ConfigError("hypernet", f"strength {parts[1]!r} in {tag!r} is not a finite number")
        requested.append((parts[0], strength))
        return ""

    return _HYPERNET_TAG.sub(take_tag, prompt or ""), requested


def chain_hypernetworks(hypernetworks: Sequence[tuple[Hypernetwork, float]],
                        context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111's apply_hypernetworks: k_in = v_in = context, then each hypernetwork in order
    with a pair for context's width sets k_in += MLP_k(k_in)·m and v_in += MLP_v(v_in)·m.

    Returns:
        (key input, value input), in context's dtype.
    """
    key_input = value_input = context
    for hypernetwork, strength in hypernetworks:
        key_input, value_input = hypernetwork.transform_context(key_input, value_input, strength)
    return key_input, value_input


# Distinct text contexts one `with apply_hypernetworks` block remembers. txt2img passes one (the
# negative and positive prompt in one batch); a pipeline that runs them separately passes two.
TEXT_CONTEXT_CACHE_SIZE = 4
# Integer dtypes of each element size: contexts are compared bit for bit through these views,
# so -0.0 and 0.0 differ and a NaN equals itself, as they must for "the same input".
_SAME_SIZE_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(tensor: torch.Tensor, other: torch.Tensor) -> bool:
    if tensor.shape != other.shape or tensor.dtype != other.dtype or tensor.device != other.device:
        return False
    as_integer = _SAME_SIZE_INTEGER.get(tensor.element_size())
    if as_integer is None or tensor.is_complex() or tensor.dtype == torch.bool:
        return False  # never seen for a text context; recomputing is always right
    return torch.equal(tensor.view(as_integer), other.view(as_integer))


def _chain_modules(hypernetworks: Sequence[tuple[Hypernetwork, float]], width: int) -> list[HypernetworkModule]:
    """The key and value modules that chain_hypernetworks runs for contexts `width` wide, in order."""
    return [module for hypernetwork, _ in hypernetworks for module in (hypernetwork.pair_for_width(width) or ())]


def _weights_state(modules: Sequence[HypernetworkModule]) -> tuple:
    """What a cached result depends on in the modules: each parameter and buffer (the object), a
    view of its data (holding that memory keeps its address from going to a new tensor) and its
    version counter, which every in-place write bumps (optimizer steps, load_state_dict, init)."""
    return tuple((tensor, tensor.detach(), tensor._version)
                 for module in modules for tensor in (*module.parameters(), *module.buffers()))


def _version_of(tensor: torch.Tensor) -> int | None:
    """The version counter, or None for an inference-mode tensor, which has none."""
    return None if tensor.is_inference() else tensor._version


def _same_weights(state: tuple, current: tuple) -> bool:
    return len(state) == len(current) and all(
        tensor is now_tensor and data.data_ptr() == now_data.data_ptr() and version == now_version
        for (tensor, data, version), (now_tensor, now_data, now_version) in zip(state, current))


@dataclass(eq=False)  # entries are told apart by identity (fields hold tensors)
class _CachedChain:
    context: torch.Tensor  # the context object it was computed for (held, so its identity stays unique)
    context_version: int | None  # None: an inference tensor, recognised by its bits only
    context_copy: torch.Tensor  # its bits then, for contexts that are equal but another object
    strengths: tuple[str, ...]  # float.hex: exact, and tells -0.0 from 0.0
    weights_state: tuple
    key_input: torch.Tensor
    value_input: torch.Tensor


class TextContextCache:
    """chain_hypernetworks for text contexts, computed once and reused while nothing it read has changed.

    Why: cross-attention's context is the prompt's text encoding, the same at every denoising
    step and in all 16 cross-attention layers of SD1, so without this the MLPs redo one result
    steps × 16 times; for a [1, 2, 1] pair at 768 that is a third of a four-width hypernetwork's
    arithmetic at 256 px.

    A stored result is reused only when it is bit for bit what the chain would compute now:
    - grad mode is off and every module of the chain is in eval mode (training, with dropout and
      gradients, always recomputes);
    - the context is the same object unchanged since (its version counter), or has the same
      shape, dtype, device and bits;
    - the same modules, with the same parameter tensors unchanged since, run at the same strengths.
    Writes through `.data` bypass version counters and are not seen; nothing here writes weights
    that way, and a cache lives for one apply_hypernetworks block only.
    """

    def __init__(self, size: int = TEXT_CONTEXT_CACHE_SIZE):
        """Args:
            size: how many results to keep (the least recently used goes first); at least 1.
        Attributes:
            hits, misses: calls answered from the cache, and calls that computed and stored.
        """
        if size < 1:
            raise ValueError(f"a text context cache keeps at least 1 result, got size={size}")
        self.size = size
        self._entries: list[_CachedChain] = []  # least recently used first
        self.hits = 0
        self.misses = 0

    def key_and_value_inputs(self, hypernetworks: Sequence[tuple[Hypernetwork, float]],
                             context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """chain_hypernetworks(hypernetworks, context), from the cache when that gives the same bits."""
        if torch.is_grad_enabled():
            return chain_hypernetworks(hypernetworks, context)
        modules = _chain_modules(hypernetworks, context.shape[-1])
        if any(layer.training for module in modules for layer in module.modules()):
            return chain_hypernetworks(hypernetworks, context)
        strengths = tuple(float(strength).hex() for _, strength in hypernetworks)
        weights_state = _weights_state(modules)
        entry = self._find(context, strengths, weights_state)
        if entry is not None:
            self._entries.remove(entry)
            self._entries.append(entry)
            self.hits += 1
            return entry.key_input, entry.value_input
        self.misses += 1
        key_input, value_input = chain_hypernetworks(hypernetworks, context)
        self._entries.append(_CachedChain(context, _version_of(context), context.detach().clone(), strengths,
                                          weights_state, key_input, value_input))
        while len(self._entries) > self.size:
            self._entries.pop(0)
        return key_input, value_input

    def _find(self, context: torch.Tensor, strengths: tuple[str, ...], weights_state: tuple) -> _CachedChain | None:
        same_chain = [entry for entry in self._entries
                      if entry.strengths == strengths and _same_weights(entry.weights_state, weights_state)]
        version = _version_of(context)
        for entry in same_chain:  # the usual case: the pipeline passes one tensor to every step
            if entry.context is context and version is not None and entry.context_version == version:
                return entry
        for entry in same_chain:  # then by bits, last because on a GPU comparing waits for the GPU
            if _same_bits(entry.context_copy, context):
                return entry
        return None


class HypernetworkAttnProcessor:
    """diffusers' AttnProcessor2_0, line for line, with the hypernetworks applied to the inputs of to_k and to_v.

    The context they rewrite is what to_k would see: encoder_hidden_states (after norm_cross,
    when the layer has one) for cross-attention, hidden_states (after group_norm) for
    self-attention. q is untouched. With no module pair for the context width the math is
    exactly AttnProcessor2_0's, bit for bit. With a text_context_cache, cross-attention takes the
    chain's result from it (the same bits, computed once); self-attention always computes.
    """

    def __init__(self, hypernetworks: Sequence[tuple[Hypernetwork, float]],
                 text_context_cache: TextContextCache | None = None):
        self.hypernetworks = list(hypernetworks)
        self.text_context_cache = text_context_cache

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            # scaled_dot_product_attention wants the mask as (batch, heads, source, target)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        is_cross_attention = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        if is_cross_attention and self.text_context_cache is not None:
            key_input, value_input = self.text_context_cache.key_and_value_inputs(self.hypernetworks, encoder_hidden_states)
        else:
            key_input, value_input = chain_hypernetworks(self.hypernetworks, encoder_hidden_states)
        key = attn.to_k(key_input)
        value = attn.to_v(value_input)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # Same call as AttnProcessor2_0 (default scale 1/sqrt(head_dim), as SD's attn.scale).
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@dataclass
class AppliedHypernetworks:
    """Where hypernetworks fire on one UNet.

    Attributes:
        layers: attention layer name -> names of the hypernetworks that fire there, in chain order.
        model_widths: the context widths of the UNet's attention layers (sorted).
        unmatched: names of hypernetworks with no module pair for any of those widths; they change nothing.
    """

    layers: dict[str, list[str]] = field(default_factory=dict)
    model_widths: list[int] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def unmatched_messages(self) -> list[str]:
        """One line per hypernetwork that fires nowhere, for the UI and the CLI."""
        return [f"hypernetwork {name!r} has no module for this model's attention widths "
                f"({', '.join(map(str, self.model_widths))}); it changes nothing" for name in self.unmatched]


def _attention_layers(unet) -> list[tuple[str, object]]:
    from diffusers.models.attention_processor import Attention  # the UNet's own library; imported when used

    return [(name, module) for name, module in unet.named_modules()
            if isinstance(module, Attention) and getattr(module, "to_k", None) is not None]


def attention_widths(unet) -> list[int]:
    """The context widths of the UNet's attention layers (to_k's input width), sorted: the widths
    a hypernetwork needs module pairs for to fire on this model (SD1: 320, 640, 768, 1280)."""
    return sorted({module.to_k.in_features for _, module in _attention_layers(unet)})


def _checked_pairs(hypernetworks: Sequence[tuple[Hypernetwork, float]]) -> list[tuple[Hypernetwork, float]]:
    checked = []
    for entry in hypernetworks:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], Hypernetwork)):
            raise ConfigError("hypernetworks", f"expected (Hypernetwork, strength) pairs, got {entry!r}")
        strength = float(entry[1])
        if not math.isfinite(strength):
            raise ConfigError("hypernetworks", f"strength for {entry[0].name!r} must be a finite number, got {entry[1]!r}")
        checked.append((entry[0], strength))
    return checked


@contextmanager
def apply_hypernetworks(unet, hypernetworks: Sequence[tuple[Hypernetwork, float]], *,
                        cache_text_context: bool = True) -> Iterator[AppliedHypernetworks]:
    """Run `unet` with hypernetworks on its attention key/value inputs, inside the `with` block.

    Only attention layers where at least one hypernetwork has a pair for the layer's context
    width (to_k's input width) get a HypernetworkAttnProcessor; all others keep theirs. On
    exit, even on an exception, every replaced layer gets back the very processor object it
    had, so the UNet is exactly as before. The hypernetworks are moved to the UNet's device
    (they stay float32). Strength counts in eval mode; a hypernetwork in train mode uses 1 and
    its dropout (training). The UNet instance is shared: do not run two generations with
    different hypernetworks on the same UNet at once.

    In eval mode without gradients, the chain's result for a text context is computed once in
    the block and reused by every cross-attention layer and step (TextContextCache: the same
    bits, never stale); training always computes.

    Args:
        unet: a diffusers UNet2DConditionModel (any module whose attention is diffusers' Attention).
        hypernetworks: (Hypernetwork, strength) pairs; they chain in this order.
        cache_text_context: False computes the chain in every cross-attention call, as for
            self-attention (for comparisons: the results are the same).
    Yields:
        AppliedHypernetworks: which layers fire, and which hypernetworks fire nowhere.
    Raises:
        ConfigError: an entry that is not (Hypernetwork, finite strength).
    """
    pairs = _checked_pairs(hypernetworks)
    layers = _attention_layers(unet)
    report = AppliedHypernetworks(model_widths=sorted({module.to_k.in_features for _, module in layers}))
    report.unmatched = [hypernetwork.name for hypernetwork, _ in pairs
                        if not set(hypernetwork.sizes) & set(report.model_widths)]
    parameter = next(unet.parameters(), None)
    if parameter is not None:
        for hypernetwork, _ in pairs:
            hypernetwork.to(device=parameter.device)
    replaced: list[tuple[object, object]] = []  # (attention module, its own processor)
    # One cache for all layers: every cross-attention layer sees the same text context.
    text_context_cache = TextContextCache() if cache_text_context else None
    try:
        for name, module in layers:
            firing = [(hypernetwork, strength) for hypernetwork, strength in pairs
                      if hypernetwork.pair_for_width(module.to_k.in_features) is not None]
            if not firing:
                continue
            replaced.append((module, module.processor))
            module.set_processor(HypernetworkAttnProcessor(firing, text_context_cache))
            report.layers[name] = [hypernetwork.name for hypernetwork, _ in firing]
        yield report
    finally:
        for module, processor in reversed(replaced):
            module.set_processor(processor)
