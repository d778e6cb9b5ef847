"""Files we write load in diffusers' load_textual_inversion with the same text-encoder output, and back."""

import copy

import pytest
import torch

from ti.conditioning import PromptEncoder
from ti.embedding import Embedding


@pytest.fixture
def pipe_copy(tiny_pipe_768):
    """diffusers' loader grows the tokenizer and the table: give it its own copy."""
    return copy.deepcopy(tiny_pipe_768)


def diffusers_output(pipe, prompt):
    """diffusers' own prompt encoding (expands multi-vector tokens via maybe_convert_prompt)."""
    with torch.no_grad():
        prompt_embeds, _ = pipe.encode_prompt(prompt, torch.device("cpu"), 1, False)
    return prompt_embeds


def ours_output(pipe, prompt, name, vectors):
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, {name: vectors})
    with torch.no_grad():
        return encoder.encode([prompt])[0]


@pytest.mark.parametrize("suffix, vectors", [(".pt", 1), (".pt", 3), (".bin", 1), (".safetensors", 2)])
def test_our_files_load_in_diffusers_with_same_output(pipe_copy, tiny_pipe_768, tmp_path, suffix, vectors):
    from ti.formats import save_embedding_file

    embedding = Embedding(name="mytoken", vectors=torch.randn(vectors, 768) * 0.02, step=10)
    path = save_embedding_file(embedding, tmp_path / f"mytoken{suffix}")
    pipe_copy.load_textual_inversion(str(path), token="mytoken")
    # diffusers adds 'mytoken', 'mytoken_1', … and expands the token in the prompt itself
    theirs = diffusers_output(pipe_copy, "a mytoken tree")
    ours = ours_output(tiny_pipe_768, "a mytoken tree", "mytoken", embedding.vectors)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_diffusers_file_loads_in_ours_with_same_output(pipe_copy, tiny_pipe_768, tmp_path):
    from ti.formats import load_embedding_file

    vector = torch.randn(768) * 0.02
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": vector}, path)  # what diffusers' training script writes
    embedding = load_embedding_file(path)
    assert embedding.name == "learned_embeds" and embedding.num_vectors == 1
    pipe_copy.load_textual_inversion(str(path))
    theirs = diffusers_output(pipe_copy, "a <cat-toy> tree")
    ours = ours_output(tiny_pipe_768, "a learned_embeds tree", "learned_embeds", embedding.vectors)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
