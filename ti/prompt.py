"""A1111 prompt syntax and 75-token chunking with embeddings spliced in (a1111-compat.md §2).

Pure: text and token ids in, chunks out. Tokenizing is passed in as a function, so these parsers
test without any model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ti.errors import PromptError

CHUNK_LENGTH = 75  # content tokens per chunk; BOS and EOS make 77
COMMA_PADDING_BACKTRACK = 20
ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1
BREAK_MARK = -1.0  # weight that marks a BREAK segment
PLACEHOLDER_ID = 0  # token id standing in for embedding vectors (as A1111); never an EOS

_RE_ATTENTION = re.compile(
    r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:
""",
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) segments: `(x)` ×1.1, `[x]` ÷1.1, `(x:w)`, `\\(` escapes.

    `BREAK` becomes the segment ("BREAK", -1). Unbalanced brackets apply to the end of the
    prompt, as in A1111. Neighbouring segments of equal weight are merged.
    """
    segments: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for index in range(start, len(segments)):
            segments[index][1] *= multiplier

    for match in _RE_ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            segments.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(segments))
        elif token == "[":
            square_brackets.append(len(segments))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_BRACKET_MULTIPLIER)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            for index, part in enumerate(_RE_BREAK.split(token)):
                if index > 0:
                    segments.append(["BREAK", BREAK_MARK])
                segments.append([part, 1.0])
    for start in round_brackets:
        multiply_range(start, ROUND_BRACKET_MULTIPLIER)
    for start in square_brackets:
        multiply_range(start, SQUARE_BRACKET_MULTIPLIER)
    if not segments:
        segments = [["", 1.0]]
    merged = [segments[0]]
    for text_part, weight in segments[1:]:
        if weight == merged[-1][1] and weight != BREAK_MARK:
            merged[-1][0] += text_part
        else:
            merged.append([text_part, weight])
    return [(text_part, weight) for text_part, weight in merged]


@dataclass
class EmbeddingMatch:
    """Where an embedding's vectors go: `offset` counts content tokens (BOS not included)."""

    offset: int
    name: str
    num_vectors: int


@dataclass
class PromptChunk:
    """77 token ids (BOS + 75 + EOS), a weight per id, and the embeddings to splice in."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    matches: list[EmbeddingMatch] = field(default_factory=list)


class EmbeddingMatcher:
    """Finds embedding names in token sequences: exact token-sequence match, longest first.

    names_to_vector_counts: {name: number of vectors}; tokenize: text -> ids (no special tokens).
    """

    def __init__(self, names_to_vector_counts: dict[str, int], tokenize: Callable[[str], list[int]]):
        self._by_first_id: dict[int, list[tuple[tuple[int, ...], str, int]]] = {}
        for name, count in names_to_vector_counts.items():
            ids = tuple(tokenize(name))
            if not ids:
                continue
            self._by_first_id.setdefault(ids[0], []).append((ids, name, count))
        for candidates in self._by_first_id.values():
            # Longest first, then by name, so 'x-2000' wins over 'x-200' and ties are deterministic.
            candidates.sort(key=lambda c: (-len(c[0]), c[1]))

    def match_at(self, tokens: Sequence[int], position: int) -> tuple[str, int, int] | None:
        """(name, vectors, tokens consumed) of the embedding starting at position, or None."""
        for ids, name, count in self._by_first_id.get(tokens[position], ()):
            if tuple(tokens[position : position + len(ids)]) == ids:
                return name, count, len(ids)
        return None


def chunk_prompt(
    segments: list[tuple[str, float]],
    tokenize: Callable[[str], list[int]],
    matcher: EmbeddingMatcher,
    bos_id: int,
    eos_id: int,
    comma_id: int | None,
) -> tuple[list[PromptChunk], int]:
    """Tokenize weighted segments into 77-token chunks; returns (chunks, tokens used).

    Tokens used counts content tokens, each embedding vector counting as one. An embedding is
    never split across chunks; when a chunk fills shortly after a comma, the text after the comma
    moves to the next chunk; BREAK starts a new chunk.
    """
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def close_chunk(is_last: bool = False) -> None:
        nonlocal chunk, token_count, last_comma
        token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        padding = CHUNK_LENGTH - len(chunk.tokens)
        chunk.tokens = [bos_id] + chunk.tokens + [eos_id] * padding + [eos_id]
        chunk.weights = [1.0] + chunk.weights + [1.0] * padding + [1.0]
        chunks.append(chunk)
        chunk = PromptChunk()
        last_comma = -1

    for text, weight in segments:
        if weight == BREAK_MARK and text == "BREAK":
            close_chunk()
            continue
        tokens = tokenize(text)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma_id:
                last_comma = len(chunk.tokens)
            elif (
                len(chunk.tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= COMMA_PADDING_BACKTRACK
            ):
                cut = last_comma + 1
                moved_tokens, moved_weights = chunk.tokens[cut:], chunk.weights[cut:]
                moved_matches = [m for m in chunk.matches if m.offset >= cut]
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                chunk.matches = [m for m in chunk.matches if m.offset < cut]
                close_chunk()
                chunk.tokens, chunk.weights = moved_tokens, moved_weights
                chunk.matches = [EmbeddingMatch(m.offset - cut, m.name, m.num_vectors) for m in moved_matches]
            if len(chunk.tokens) == CHUNK_LENGTH:
                close_chunk()
            found = matcher.match_at(tokens, position)
            if found is None:
                chunk.tokens.append(token)
                chunk.weights.append(weight)
                position += 1
                continue
            name, num_vectors, consumed = found
            if num_vectors > CHUNK_LENGTH:
                raise PromptError(f"embedding {name!r} has {num_vectors} vectors; a prompt chunk holds {CHUNK_LENGTH}")
            if len(chunk.tokens) + num_vectors > CHUNK_LENGTH:
                close_chunk()
            chunk.matches.append(EmbeddingMatch(len(chunk.tokens), name, num_vectors))
            chunk.tokens += [PLACEHOLDER_ID] * num_vectors  # the hook overwrites these rows
            chunk.weights += [weight] * num_vectors
            position += consumed
    if chunk.tokens or not chunks:
        close_chunk(is_last=True)
    return chunks, token_count


