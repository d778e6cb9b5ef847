"""Prompt syntax and chunking, table-driven, with a toy tokenizer (one id per word)."""

import pytest

from ti.errors import PromptError
from ti.prompt import CHUNK_LENGTH, EmbeddingMatcher, chunk_prompt, parse_prompt_attention

W = 1.1


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("(a cat)", [("a cat", W)]),
        ("((a))", [("a", W * W)]),
        ("[a]", [("a", 1 / W)]),
        ("(a:1.5) b", [("a", 1.5), (" b", 1.0)]),
        ("(a:0.5)", [("a", 0.5)]),
        (r"\(a\)", [("(a)", 1.0)]),
        ("a (b", [("a ", 1.0), ("b", W)]),  # unbalanced: applies to the end
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("", [("", 1.0)]),
        ("a:1.2)", [("a", 1.0), (":1.2)", 1.0)]),
        ("[a:b]", [("a", 1 / W), (":", 1 / W), ("b", 1 / W)]),
    ],
)
def test_parse_prompt_attention(prompt, expected):
    got = parse_prompt_attention(prompt)
    merged_expected = []
    for text, weight in expected:  # the parser merges equal neighbours
        if merged_expected and merged_expected[-1][1] == weight and weight != -1.0:
            merged_expected[-1] = (merged_expected[-1][0] + text, weight)
        else:
            merged_expected.append((text, weight))
    assert [t for t, _ in got] == [t for t, _ in merged_expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in merged_expected])


VOCAB: dict[str, int] = {}


def toy_tokenize(text: str) -> list[int]:
    ids = []
    for word in text.replace(",", " , ").lower().split():
        ids.append(VOCAB.setdefault(word, 10 + len(VOCAB)))
    return ids


BOS, EOS = 1, 2


def chunk(prompt, embeddings=None):
    matcher = EmbeddingMatcher(embeddings or {}, toy_tokenize)
    return chunk_prompt(parse_prompt_attention(prompt), toy_tokenize, matcher, BOS, EOS, toy_tokenize(",")[0])


def test_chunk_shape_and_padding():
    chunks, used = chunk("a photo of a cat")
    assert used == 5
    assert len(chunks) == 1
    assert len(chunks[0].tokens) == 77
    assert chunks[0].tokens[0] == BOS and chunks[0].tokens[-1] == EOS
    assert chunks[0].tokens[6:] == [EOS] * 71


def test_embedding_matched_and_counted_by_vectors():
    chunks, used = chunk("a photo of myemb by monet", {"myemb": 4})
    assert used == 4 + 5
    [match] = chunks[0].matches
    assert (match.offset, match.name, match.num_vectors) == (3, "myemb", 4)


def test_longest_name_wins():
    chunks, _ = chunk("x y z", {"x": 1, "x y": 2})
    assert [(m.name, m.offset) for m in chunks[0].matches] == [("x y", 0)]


def test_case_insensitive_match():
    chunks, _ = chunk("a MyEmb", {"myemb": 2})
    assert chunks[0].matches[0].name == "myemb"


def test_long_prompt_makes_chunks_and_embedding_never_straddles():
    words = " ".join(f"w{i}" for i in range(73))
    chunks, used = chunk(words + " emb", {"emb": 5})
    assert len(chunks) == 2
    assert chunks[0].matches == []
    assert chunks[1].matches[0].offset == 0
    assert used == CHUNK_LENGTH + 5  # a closed chunk counts whole


def test_break_starts_new_chunk():
    chunks, _ = chunk("a BREAK b")
    assert len(chunks) == 2
    assert chunks[1].tokens[1] == toy_tokenize("b")[0]


def test_comma_backtrack_moves_tail_to_next_chunk():
    words = " ".join(f"v{i}" for i in range(70)) + " , t1 t2 t3 t4 t5 t6"
    chunks, _ = chunk(words)
    assert len(chunks) == 2
    # the 5 tokens after the comma that would not fit moved; the first chunk ends with the comma
    comma = toy_tokenize(",")[0]
    first_content = chunks[0].tokens[1:-1]
    last_real = max(i for i, t in enumerate(first_content) if t != EOS)
    assert first_content[last_real] == comma
    assert chunks[1].tokens[1:7] == toy_tokenize("t1 t2 t3 t4 t5 t6")


def test_weights_follow_tokens():
    chunks, _ = chunk("(a:1.5) b")
    assert chunks[0].weights[1] == pytest.approx(1.5)
    assert chunks[0].weights[2] == pytest.approx(1.0)


def test_embedding_longer_than_chunk_refused():
    with pytest.raises(PromptError, match="76 vectors"):
        chunk("big", {"big": 76})
