"""Prompt text -> text-encoder conditioning, with embeddings and emphasis (A1111's behaviour)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import torch

from ti.config import check_clip_skip
from ti.errors import ConfigError
from ti.hook import token_embedding_hook
from ti.locks import module_lock
from ti.prompt import (
    CHUNK_LENGTH,
    EmbeddingMatcher,
    PromptChunk,
    chunk_prompt,
    parse_prompt_attention,
)


def text_encoder_layers(text_encoder) -> int:
    return int(text_encoder.config.num_hidden_layers)


def check_clip_skip_for(clip_skip: int, text_encoder) -> None:
    """check_clip_skip, and the encoder must have that many layers (the demo's has 5)."""
    check_clip_skip(clip_skip)
    if clip_skip > text_encoder_layers(text_encoder):
        raise ConfigError("Clip skip", f"{clip_skip} is more than the text encoder's "
                                       f"{text_encoder_layers(text_encoder)} layers")


def final_layer_norm(text_encoder):
    """The CLIP text model's final LayerNorm (transformers 5 has it on the model; 4 on .text_model)."""
    norm = getattr(text_encoder, "final_layer_norm", None)
    return norm if norm is not None else text_encoder.text_model.final_layer_norm


def effective_clip_skip(model, requested: int) -> tuple[int, str | None]:
    """The Clip skip to encode with, and a note when the model ignores the one asked for.

    A1111 applies Clip skip to SD1's CLIP only: SD2's OpenCLIP text encoder already stops at the
    penultimate layer (diffusers' SD2 conversions drop the last one), and A1111 ignores the
    setting there while still writing it into the infotext. So do we."""
    if requested > 1 and model.family == "sd2":
        return 1, (f"Clip skip {requested} is ignored for SD 2.x models, as in A1111 (their text encoder "
                   "already ends at the penultimate layer)")
    if requested > 1 and model.family == "sdxl":
        return 1, (f"Clip skip {requested} is ignored for SDXL, as in A1111 (SDXL already takes both "
                   "encoders' penultimate layers)")
    return requested, None


@dataclass
class ParsedPrompt:
    """A prompt split into chunks; which embeddings it used; content tokens used."""

    text: str
    chunks: list[PromptChunk]
    token_count: int

    @property
    def used_embeddings(self) -> list[str]:
        names: list[str] = []
        for chunk in self.chunks:
            for match in chunk.matches:
                if match.name not in names:
                    names.append(match.name)
        return names


class PromptEncoder:
    """Encodes prompts through a tokenizer and text encoder with embedding vectors spliced in.

    vectors_by_name maps an embedding name to its vectors [n, dim]: the loaded files for
    generation, or the trainable Parameter while training (gradients flow through).
    clip_skip: A1111's "Clip skip" (CLIP_stop_at_last_layers): 1 is the last layer's output;
    N > 1 the output N-1 layers before it, with the final layer norm applied to it as A1111 does.
    """

    def __init__(self, tokenizer, text_encoder, vectors_by_name: Mapping[str, torch.Tensor], clip_skip: int = 1,
                 penultimate: bool = False, output_cache: ChunkOutputCache | None = None):
        """penultimate: SDXL's context, hidden_states[-2] with no final layer norm (clip_skip unused).
        output_cache: keep each distinct chunk's encoder output (for an encoder that nothing trains:
        its outputs are constant; they come back without gradients)."""
        if len(tokenizer) <= 2:
            raise ValueError("the tokenizer is empty (an offline hub load returns an empty tokenizer)")
        check_clip_skip_for(clip_skip, text_encoder)
        self.clip_skip = int(clip_skip)
        self.penultimate = penultimate
        self.last_pooled: torch.Tensor | None = None  # text_embeds of the last first chunk encoded (SDXL's te2)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vectors_by_name = dict(vectors_by_name)
        self.matcher = EmbeddingMatcher({n: int(v.shape[0]) for n, v in self.vectors_by_name.items()}, self.tokenize)
        comma_ids = self.tokenize(",")
        self.comma_id = comma_ids[0] if len(comma_ids) == 1 else None
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        # SD2's OpenCLIP tokenizer pads with id 0 after the first EOS; SD1's pads with EOS.
        self.pad_id = pad if pad is not None and pad != self.eos_id else None
        self.output_cache = output_cache

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def parse(self, prompt: str) -> ParsedPrompt:
        chunks, used = chunk_prompt(
            parse_prompt_attention(prompt), self.tokenize, self.matcher, self.bos_id, self.eos_id, self.comma_id
        )
        return ParsedPrompt(prompt, chunks, used)

    def empty_chunk(self) -> PromptChunk:
        tokens = [self.bos_id] + [self.eos_id] * (CHUNK_LENGTH + 1)
        return PromptChunk(tokens=tokens, weights=[1.0] * len(tokens))

    def encode(self, prompts: list[str], min_chunks: int = 1) -> tuple[torch.Tensor, list[ParsedPrompt]]:
        """Returns (conditioning [B, 77·k, C], parsed prompts); k = the most chunks any prompt needs."""
        parsed = [self.parse(p) for p in prompts]
        return self.encode_parsed(parsed, min_chunks), parsed

    def encode_parsed(self, parsed: list[ParsedPrompt], min_chunks: int = 1) -> torch.Tensor:
        num_chunks = max([min_chunks] + [len(p.chunks) for p in parsed])
        # Under the encoder's lock from reading its device to the last chunk: a generation in
        # another tab may bring an unloaded text encoder over to its device meanwhile.
        with module_lock(self.text_encoder):
            device = self.text_encoder.device
            outputs = []
            for index in range(num_chunks):
                chunks = [p.chunks[index] if index < len(p.chunks) else self.empty_chunk() for p in parsed]
                outputs.append(self._encode_chunks(chunks, device, keep_pooled=index == 0))
        return torch.cat(outputs, dim=1)

    def _encode_chunks(self, chunks: list[PromptChunk], device: torch.device, keep_pooled: bool = False) -> torch.Tensor:
        if self.output_cache is None:
            hidden = self._run_encoder(chunks, device, keep_pooled)
        else:
            hidden = self._cached_outputs(chunks, device, keep_pooled)
        return _apply_emphasis(hidden, chunks)

    def _cached_outputs(self, chunks: list[PromptChunk], device: torch.device, keep_pooled: bool) -> torch.Tensor:
        """The encoder's outputs for chunks, each distinct chunk encoded once per cache. A chunk's
        output depends on its tokens and spliced vectors alone (emphasis comes after, over the
        batch), so the cache keys on those. Misses are encoded one chunk at a time: the same chunk
        gives the same bits whatever batch it first came in, so a resumed run equals a straight one."""
        found: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        pooled_before = self.last_pooled  # a miss sets it; only the first chunk's may stay
        for chunk in chunks:
            key = chunk_key(chunk)
            if key in found:
                continue
            cached = self.output_cache.get(key)
            if cached is None:
                with torch.no_grad():
                    hidden = self._run_encoder([chunk], device, keep_pooled=True)[0]
                pooled = None if self.last_pooled is None else self.last_pooled[0]
                cached = (hidden, pooled)
                self.output_cache.put(key, cached)
            found[key] = cached
        outputs = [found[chunk_key(chunk)] for chunk in chunks]
        if keep_pooled:
            self.last_pooled = None if outputs[0][1] is None else torch.stack([pooled for _, pooled in outputs])
        else:
            self.last_pooled = pooled_before
        return torch.stack([hidden for hidden, _ in outputs])

    def _run_encoder(self, chunks: list[PromptChunk], device: torch.device, keep_pooled: bool = False) -> torch.Tensor:
        """The encoder's output for each chunk, before emphasis: [len(chunks), 77, C]."""
        token_rows = []
        for chunk in chunks:
            tokens = list(chunk.tokens)
            if self.pad_id is not None:
                first_eos = tokens.index(self.eos_id)
                tokens = tokens[: first_eos + 1] + [self.pad_id] * (len(tokens) - first_eos - 1)
            token_rows.append(tokens)
        input_ids = torch.tensor(token_rows, dtype=torch.long, device=device)
        splices = [[(m.offset, self.vectors_by_name[m.name]) for m in chunk.matches] for chunk in chunks]
        with token_embedding_hook(self.text_encoder, splices):
            if self.penultimate:
                outputs = self.text_encoder(input_ids, output_hidden_states=True)
                hidden = outputs.hidden_states[-2]
                if keep_pooled:  # SDXL's pooled: te2's projection of its last layer at EOS, first chunk only
                    self.last_pooled = getattr(outputs, "text_embeds", None)
            elif self.clip_skip > 1:
                outputs = self.text_encoder(input_ids, output_hidden_states=True)
                hidden = final_layer_norm(self.text_encoder)(outputs.hidden_states[-self.clip_skip])
            else:
                hidden = self.text_encoder(input_ids)[0]
        return hidden


def _apply_emphasis(hidden: torch.Tensor, chunks: list[PromptChunk]) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each token's output by its weight, then restore the
    mean over the whole batch of chunks (so it is applied after the encoder, never cached)."""
    weights = torch.tensor([c.weights for c in chunks], dtype=torch.float32, device=hidden.device)
    if torch.all(weights == 1.0):
        return hidden
    hidden32 = hidden.float()
    original_mean = hidden32.mean()
    hidden32 = hidden32 * weights.unsqueeze(-1)
    hidden32 = hidden32 * (original_mean / hidden32.mean())
    return hidden32.to(hidden.dtype)


def chunk_key(chunk: PromptChunk) -> tuple:
    """What an encoder's output for a chunk depends on: its tokens and which embedding sits where."""
    return tuple(chunk.tokens), tuple((match.offset, match.name) for match in chunk.matches)


class ChunkOutputCache:
    """Least-recently-used store of a frozen encoder's outputs per chunk, bounded in bytes (an
    SDXL te2 chunk is 77 x 1280 values: 0.4 MB in float32)."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    def get(self, key: tuple) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple, entry: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        self._entries[key] = entry
        self.bytes += _entry_bytes(entry)
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= _entry_bytes(evicted)


def _entry_bytes(entry: tuple[torch.Tensor, torch.Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in entry if t is not None)


@dataclass
class Conditioning:
    """What the UNet is conditioned on: context [B, 77·k, C]; SDXL also a pooled text embedding [B, P]."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def repeat(self, times: int) -> "Conditioning":
        return Conditioning(self.context.repeat(times, 1, 1),
                            None if self.pooled is None else self.pooled.repeat(times, 1))

    def zeros_like(self) -> "Conditioning":
        return Conditioning(torch.zeros_like(self.context), None if self.pooled is None else torch.zeros_like(self.pooled))


class SDXLPromptEncoder:
    """SDXL's two text encoders as A1111 uses them (../shared/reference/sdxl.md §3).

    The prompt is chunked once (both tokenizers share CLIP's vocabulary); te1 gets each
    embedding's clip_l rows and te2 its clip_g rows at the same offsets; the context is both
    penultimate layers (no final layer norm) side by side, emphasis per encoder; the pooled
    embedding is te2's projection of the first chunk. te2 pads with id 0 after the first EOS.
    """

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2, vectors_by_name: Mapping[str, torch.Tensor],
                 frozen_encoders: tuple[str, ...] = ()):
        """frozen_encoders: "clip_l" / "clip_g" whose outputs nothing trains (training one half of an
        embedding, or a hypernetwork): each distinct chunk goes through that encoder once."""
        unknown = set(frozen_encoders) - {"clip_l", "clip_g"}
        if unknown:
            raise ValueError(f"frozen_encoders: unknown {sorted(unknown)}; expected clip_l, clip_g")
        width_l = int(text_encoder.config.hidden_size)
        self.encoder_l = PromptEncoder(tokenizer, text_encoder, {n: v[:, :width_l] for n, v in vectors_by_name.items()},
                                       penultimate=True,
                                       output_cache=ChunkOutputCache() if "clip_l" in frozen_encoders else None)
        self.encoder_g = PromptEncoder(tokenizer_2, text_encoder_2,
                                       {n: v[:, width_l:] for n, v in vectors_by_name.items()}, penultimate=True,
                                       output_cache=ChunkOutputCache() if "clip_g" in frozen_encoders else None)
        self.encoder_g.pad_id = 0  # whatever the folder's tokenizer says: SDXL's te2 was trained so
        self.text_encoder = text_encoder

    def parse(self, prompt: str) -> ParsedPrompt:
        return self.encoder_l.parse(prompt)

    def encode(self, prompts: list[str], min_chunks: int = 1) -> tuple[Conditioning, list[ParsedPrompt]]:
        parsed = [self.parse(p) for p in prompts]
        return self.encode_parsed(parsed, min_chunks), parsed

    def encode_parsed(self, parsed: list[ParsedPrompt], min_chunks: int = 1) -> Conditioning:
        context_l = self.encoder_l.encode_parsed(parsed, min_chunks)
        with module_lock(self.encoder_g.text_encoder):
            context_g = self.encoder_g.encode_parsed(parsed, min_chunks)
            pooled = self.encoder_g.last_pooled
        return Conditioning(torch.cat([context_l, context_g.to(context_l.dtype)], dim=-1), pooled)
