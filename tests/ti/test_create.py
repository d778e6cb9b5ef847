"""Creating embeddings: names, init vectors, files."""

import pytest
import torch

from ti.conditioning import PromptEncoder
from ti.create import clean_embedding_name, create_embedding, init_vectors
from ti.errors import ConfigError
from ti.pipeline import LoadedModel, demo_sha256


@pytest.fixture(scope="module")
def demo_model(tiny_pipe):
    return LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                       device=torch.device("cpu"), dtype=torch.float32, is_demo=True)


@pytest.mark.parametrize(
    "raw, cleaned",
    [("my-style", "my-style"), ("a/b\\c", "abc"), ("  x y  ", "x y"), ("naïve_1.0", "naïve_1.0"), ("a:b*c?", "abc")],
)
def test_clean_name(raw, cleaned):
    assert clean_embedding_name(raw) == cleaned


@pytest.mark.parametrize("raw", ["", "   ", "///", "..", ".", ".hidden", "::**"])
def test_unusable_names_refused(raw):
    with pytest.raises(ConfigError) as info:
        clean_embedding_name(raw)
    assert info.value.field == "name"


def weight(pipe):
    return pipe.text_encoder.get_input_embeddings().weight


@pytest.mark.parametrize("count, expected_rows", [(1, [0]), (2, [0, 1]), (5, [0, 0, 0, 1, 1]), (4, [0, 0, 1, 1])])
def test_init_tokens_spread_as_a1111(tiny_pipe, count, expected_rows):
    ids = tiny_pipe.tokenizer("red tree", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    vectors = init_vectors(tiny_pipe.tokenizer, weight(tiny_pipe), "red tree", count)
    expected = weight(tiny_pipe)[torch.tensor([ids[r] for r in expected_rows])]
    torch.testing.assert_close(vectors, expected.detach())


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_init_text_gives_zeros(tiny_pipe, text):
    vectors = init_vectors(tiny_pipe.tokenizer, weight(tiny_pipe), text, 3)
    assert vectors.shape == (3, 32) and torch.count_nonzero(vectors) == 0


@pytest.mark.parametrize("count", [0, 76])
def test_vector_count_bounds(tiny_pipe, count):
    with pytest.raises(ConfigError, match="vectors per token"):
        init_vectors(tiny_pipe.tokenizer, weight(tiny_pipe), "tree", count)


def test_created_embedding_encodes_like_its_init_text(demo_model, tmp_path):
    """With init text 'tree', 'a zzzz1234 by monet' == 'a tree by monet' through the text encoder."""
    from ti.formats import load_embedding_file

    path = create_embedding(demo_model, "zzzz1234", "tree", 1, tmp_path)
    embedding = load_embedding_file(path)
    assert (embedding.name, embedding.step, embedding.checkpoint_hash) == ("zzzz1234", 0, demo_model.short_hash)
    encoder = PromptEncoder(demo_model.tokenizer, demo_model.text_encoder, {"zzzz1234": embedding.vectors})
    with torch.no_grad():
        ours, _ = encoder.encode(["a zzzz1234 by monet"])
        plain, _ = encoder.encode(["a tree by monet"])
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-6)


def test_existing_file_needs_overwrite(demo_model, tmp_path):
    create_embedding(demo_model, "dup", "tree", 1, tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        create_embedding(demo_model, "dup", "tree", 2, tmp_path)
    create_embedding(demo_model, "dup", "tree", 2, tmp_path, overwrite=True)


def test_path_like_name_is_refused_and_nothing_written(demo_model, tmp_path):
    with pytest.raises(ConfigError, match="path-like"):
        create_embedding(demo_model, "../../escape", "tree", 1, tmp_path / "emb")
    assert list(tmp_path.rglob("*.pt")) == []
    path = create_embedding(demo_model, "a/b", "tree", 1, tmp_path / "emb")
    assert path == tmp_path / "emb" / "ab.pt"
