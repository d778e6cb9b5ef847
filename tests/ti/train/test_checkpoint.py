"""The embedding + .optim pair: A1111's checksum, what resuming accepts, and what it refuses."""

import re
import zipfile

import pytest
import torch

from ti.embedding import Embedding
from ti.errors import TrainingError
from ti.formats.a1111_pt import A1111_ZIP_MEMBER
from ti.train.checkpoint import (
    a1111_checksum,
    load_resume_state,
    load_start_embedding,
    optimizer_path,
    save_checkpoint,
)


def test_a1111_checksum():
    # By hand: r = 50·997 = 49850; r = (49850·281) ^ (-25·997) & 0xFFFFFFFF; r = (r·281) ^ 99700 ...
    assert a1111_checksum(torch.tensor([[0.5, -0.25, 1.0]])) == "3315"
    assert a1111_checksum(torch.zeros(2, 4)) == "0000"
    assert re.fullmatch(r"[0-9a-f]{4}", a1111_checksum(torch.randn(3, 768)))


def _optimizer_after_a_step(vectors):
    parameter = torch.nn.Parameter(vectors.clone())
    optimizer = torch.optim.AdamW([parameter], lr=0.01, weight_decay=0)
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    return parameter, optimizer


def test_save_then_resume_state(tmp_path):
    parameter, optimizer = _optimizer_after_a_step(torch.randn(2, 32))
    embedding = Embedding("tok", parameter.detach().clone(), step=7, checkpoint_hash="abcdef0123", checkpoint_name="demo")
    path = save_checkpoint(embedding, tmp_path / "tok.pt", optimizer, seed=11, grad_scaler_state=None)
    assert optimizer_path(path).name == "tok.pt.optim"
    members = zipfile.ZipFile(optimizer_path(path)).namelist()
    assert members and all(A1111_ZIP_MEMBER.match(name) for name in members)  # A1111's loader accepts it
    loaded = load_start_embedding(path, expected_width=32)
    assert loaded.step == 7 and torch.equal(loaded.vectors, embedding.vectors)
    state = load_resume_state(path, loaded)
    assert state.note is None and state.seed == 11
    fresh_parameter = torch.nn.Parameter(loaded.vectors.clone())
    fresh = torch.optim.AdamW([fresh_parameter], lr=0.01, weight_decay=0)
    fresh.load_state_dict(state.optimizer_state)
    assert torch.equal(fresh.state[fresh_parameter]["exp_avg"], optimizer.state[parameter]["exp_avg"])


def test_optimizer_state_for_other_vectors_or_step_is_ignored(tmp_path):
    parameter, optimizer = _optimizer_after_a_step(torch.randn(1, 32))
    path = save_checkpoint(Embedding("tok", parameter.detach().clone(), step=3), tmp_path / "tok.pt", optimizer, 0)
    edited = Embedding("tok", parameter.detach() + 1.0, step=3)
    assert load_resume_state(path, edited).optimizer_state is None
    assert "other vectors" in load_resume_state(path, edited).note
    other_step = Embedding("tok", parameter.detach().clone(), step=4)
    assert "saved at step 3" in load_resume_state(path, other_step).note
    optimizer_path(path).unlink()
    assert "not found" in load_resume_state(path, other_step).note
    assert load_resume_state(path, Embedding("tok", parameter.detach().clone(), step=0)).note is None  # fresh start
    optimizer_path(path).write_bytes(b"garbage")
    assert "starts fresh" in load_resume_state(path, other_step).note


def test_start_embedding_errors(tmp_path):
    with pytest.raises(TrainingError, match="python -m ti create tok"):
        load_start_embedding(tmp_path / "tok.pt", 32)
    (tmp_path / "tok.safetensors").write_bytes(b"x")
    with pytest.raises(TrainingError, match="convert it to .pt"):
        load_start_embedding(tmp_path / "tok.pt", 32)
    parameter, optimizer = _optimizer_after_a_step(torch.randn(1, 768))
    save_checkpoint(Embedding("wide", parameter.detach(), step=0), tmp_path / "wide.pt", optimizer, 0)
    with pytest.raises(TrainingError, match="768 wide.*32 wide"):
        load_start_embedding(tmp_path / "wide.pt", 32)
