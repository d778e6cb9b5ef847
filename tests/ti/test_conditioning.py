"""The hook and prompt conditioning on the tiny in-process model."""

import pytest
import torch

from ti.conditioning import PromptEncoder
from ti.hook import token_embedding_hook


def token_rows(pipe, text):
    ids = pipe.tokenizer(text, add_special_tokens=False)["input_ids"]
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()


def test_hook_restores_layer_and_gradients_reach_vectors(tiny_pipe):
    te = tiny_pipe.text_encoder
    original = te.get_input_embeddings()
    vectors = torch.nn.Parameter(torch.randn(2, 32))
    encoder = PromptEncoder(tiny_pipe.tokenizer, te, {"myemb": vectors})
    cond, [parsed] = encoder.encode(["a photo of myemb"])
    assert te.get_input_embeddings() is original
    assert parsed.used_embeddings == ["myemb"]
    assert cond.shape == (1, 77, 32)
    (cond ** 2).sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0


def test_hook_restores_layer_after_error(tiny_pipe):
    te = tiny_pipe.text_encoder
    original = te.get_input_embeddings()
    with pytest.raises(RuntimeError):
        with token_embedding_hook(te, [[]]):
            raise RuntimeError("boom")
    assert te.get_input_embeddings() is original


def test_embedding_of_word_vectors_equals_the_word(tiny_pipe):
    """An embedding holding the token vectors of 'tree' encodes exactly like the word 'tree'."""
    tree = token_rows(tiny_pipe, "tree")
    encoder = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, {"zzzz1234": tree})
    with torch.no_grad():
        with_embedding, _ = encoder.encode(["a zzzz1234 by monet"])
        with_word, _ = encoder.encode(["a tree by monet"])
    torch.testing.assert_close(with_embedding, with_word, rtol=0, atol=1e-6)


def test_several_embeddings_and_different_outputs(tiny_pipe):
    a = torch.randn(1, 32)
    b = torch.randn(3, 32)
    encoder = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, {"embone": a, "embtwo": b})
    with torch.no_grad():
        cond, [parsed] = encoder.encode(["embone and embtwo"])
        plain, _ = encoder.encode(["a and b"])
    assert parsed.used_embeddings == ["embone", "embtwo"]
    assert parsed.token_count == 1 + 1 + 3
    assert not torch.allclose(cond, plain)


def test_long_prompt_concatenates_chunks(tiny_pipe):
    encoder = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, {})
    with torch.no_grad():
        cond, [parsed] = encoder.encode([" ".join(["tree"] * 100)])
    assert len(parsed.chunks) == 2
    assert cond.shape == (1, 154, 32)


def test_emphasis_changes_output_and_keeps_mean(tiny_pipe):
    encoder = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, {})
    with torch.no_grad():
        plain, _ = encoder.encode(["a tree"])
        weighted, _ = encoder.encode(["a (tree:1.5)"])
    assert not torch.allclose(plain, weighted)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-4, abs=1e-6)


def test_batch_rows_get_their_own_embeddings(tiny_pipe):
    vec = torch.randn(2, 32)
    encoder = PromptEncoder(tiny_pipe.tokenizer, tiny_pipe.text_encoder, {"myemb": vec})
    with torch.no_grad():
        both, _ = encoder.encode(["myemb tree", "tree tree"])
        alone, _ = encoder.encode(["tree tree"])
    torch.testing.assert_close(both[1:], alone)
