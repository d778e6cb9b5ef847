"""Hypernetworks at generation and training time: `<hypernet:name:0.8>` tags, and the attention
processor that rewrites key/value inputs exactly where A1111's fire (a1111-compat.md §8).

In every UNet attention layer the context is the text (cross-attention, `encoder_hidden_states`)
or the image features themselves (self-attention, `hidden_states`). A hypernetwork fires in a
layer when it has a module pair for the context's width: in SD1, 768 is the text and 320/640/1280
are self-attention; in SD2 the text is 1024. A hypernetwork whose widths match no layer (a
768-only one on a 1024 model, or any SD1 one on the 32-wide demo) changes nothing; the report
from apply_hypernetworks says so, so the UI can show it.
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
from ti.hypernetwork.module import Hypernetwork

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


class HypernetworkAttnProcessor:
    """diffusers' AttnProcessor2_0, line for line, with the hypernetworks applied to the inputs of to_k and to_v.

    The context they rewrite is what to_k would see: encoder_hidden_states (after norm_cross,
    when the layer has one) for cross-attention, hidden_states (after group_norm) for
    self-attention. q is untouched. With no module pair for the context width the math is
    exactly AttnProcessor2_0's, bit for bit.
    """

    def __init__(self, hypernetworks: Sequence[tuple[Hypernetwork, float]]):
        self.hypernetworks = list(hypernetworks)

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
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

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
def apply_hypernetworks(unet, hypernetworks: Sequence[tuple[Hypernetwork, float]]) -> Iterator[AppliedHypernetworks]:
    """Run `unet` with hypernetworks on its attention key/value inputs, inside the `with` block.

    Only attention layers where at least one hypernetwork has a pair for the layer's context
    width (to_k's input width) get a HypernetworkAttnProcessor; all others keep theirs. On
    exit, even on an exception, every replaced layer gets back the very processor object it
    had, so the UNet is exactly as before. The hypernetworks are moved to the UNet's device
    (they stay float32). Strength counts in eval mode; a hypernetwork in train mode uses 1 and
    its dropout (training). The UNet instance is shared: do not run two generations with
    different hypernetworks on the same UNet at once.

    Args:
        unet: a diffusers UNet2DConditionModel (any module whose attention is diffusers' Attention).
        hypernetworks: (Hypernetwork, strength) pairs; they chain in this order.
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
    try:
        for name, module in layers:
            firing = [(hypernetwork, strength) for hypernetwork, strength in pairs
                      if hypernetwork.pair_for_width(module.to_k.in_features) is not None]
            if not firing:
                continue
            replaced.append((module, module.processor))
            module.set_processor(HypernetworkAttnProcessor(firing))
            report.layers[name] = [hypernetwork.name for hypernetwork, _ in firing]
        yield report
    finally:
        for module, processor in reversed(replaced):
            module.set_processor(processor)
