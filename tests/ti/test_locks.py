"""Per-module locks and where a shared module lives (ti/locks.py)."""

import threading

import torch
from torch import nn

import ti.locks as locks
from ti.locks import module_lock, move_module, on_device


class _FakePlacedModule(nn.Linear):
    """A module that pretends to move between devices (no GPU here): .to records the move."""

    def __init__(self, device: str):
        super().__init__(2, 2)
        self.fake_device, self.moves = torch.device(device), []

    def to(self, device):
        self.moves.append(str(device))
        self.fake_device = torch.device(device)
        return self


def test_on_device_brings_a_parked_module_over_and_puts_it_back(monkeypatch):
    monkeypatch.setattr(locks, "_device_of", lambda module: module.fake_device)
    vae = _FakePlacedModule("cpu")  # parked by a training run with "unload VAE"
    with on_device(vae, "cuda:0"):
        assert vae.fake_device == torch.device("cuda:0")
    assert vae.moves == ["cuda:0", "cpu"] and vae.fake_device == torch.device("cpu")

    already_there = _FakePlacedModule("cuda:0")
    with on_device(already_there, "cuda"):  # "cuda" is the current CUDA device: no move
        pass
    assert already_there.moves == []


def test_a_move_waits_for_the_module_to_be_out_of_use(monkeypatch):
    monkeypatch.setattr(locks, "_device_of", lambda module: module.fake_device)
    vae = _FakePlacedModule("cuda:0")
    inside, moved = threading.Event(), []
    with on_device(vae, "cuda:0"):
        mover = threading.Thread(target=lambda: (inside.wait(), move_module(vae, "cpu"), moved.append(True)))
        mover.start()
        inside.set()
        mover.join(0.2)
        assert mover.is_alive() and vae.moves == []  # blocked on the lock, not moved
    mover.join(10)
    assert moved and vae.moves == ["cpu"]


def test_the_lock_is_reentrant_so_nested_blocks_on_one_thread_do_not_deadlock():
    module = nn.Linear(1, 1)
    with module_lock(module), on_device(module, "cpu"), module_lock(module):
        pass
