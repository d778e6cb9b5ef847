"""A full disk during a save: the previous file stays intact, no temp file is left, and the error
says what happened ("no space left on device while saving X")."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

import reliability_kit as kit
from ti.cli import main
from ti.embedding import Embedding
from ti.formats import SaveFailed, load_embedding_file, save_embedding_file

SMALL = Embedding("tok", torch.ones(1, 32), step=1)
LARGE = Embedding("tok", torch.ones(75, 768), step=2)  # ~230 KB as .pt


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs (needs root, as in CI); skipped where mounting is not permitted."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the simulated test covers the writer")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file until the disk is full, then give back `leave_bytes`."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
    if leave_bytes:
        os.truncate(filler, max(filler.stat().st_size - leave_bytes, 0))
    return filler


def assert_refused_cleanly(path: Path, before: bytes, error: SaveFailed) -> None:
    assert str(error) == f"no space left on device while saving {path} (the previous file is unchanged)"
    assert error.errno == errno.ENOSPC and isinstance(error, OSError)
    assert path.read_bytes() == before and load_embedding_file(path).step == 1
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == [], "temp file left behind"


def test_full_disk_keeps_the_previous_file(small_disk):
    path = save_embedding_file(SMALL, small_disk / "embeddings" / "tok.pt")
    before = path.read_bytes()
    fill(small_disk)
    with pytest.raises(SaveFailed) as failure:
        save_embedding_file(LARGE, path)
    assert_refused_cleanly(path, before, failure.value)


def test_simulated_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: the same through an fsync that reports ENOSPC."""
    path = save_embedding_file(SMALL, tmp_path / "tok.pt")
    before = path.read_bytes()

    def full_disk_fsync(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk_fsync)
    with pytest.raises(SaveFailed) as failure:
        save_embedding_file(LARGE, path)
    assert_refused_cleanly(path, before, failure.value)


def test_cli_says_what_happened_in_one_line(small_disk, capsys):
    fill(small_disk)
    status = main(["create-hypernetwork", "tok", "--sizes", "768", "--hypernetwork-dir", str(small_disk / "hypernetworks")])
    err = capsys.readouterr().err
    assert status == 2
    assert err == f"error: no space left on device while saving {small_disk / 'hypernetworks' / 'tok.pt'} (nothing was written)\n"


def test_training_on_a_full_disk_keeps_the_embedding_and_resumes(small_disk, demo_model):
    from ti.train import TrainConfig, train_embedding

    kit.prepare_training_folder(small_disk, "tok")
    embedding_path = small_disk / "embeddings" / "tok.pt"
    before = embedding_path.read_bytes()
    filler = fill(small_disk)
    config = TrainConfig(name="tok", data_dir=small_disk / "data", width=64, height=64, max_steps=3, save_every=1,
                         preview_every=0, log_dir=str(small_disk / "logs"),
                         templates_dir=str(kit.REPO_ROOT / "textual_inversion_templates"))
    with pytest.raises(OSError) as failure:  # SaveFailed from our writer; the loss CSV's own OSError otherwise
        train_embedding(demo_model, config, small_disk / "embeddings")
    assert "No space left on device" in str(failure.value) or "no space left on device while saving" in str(failure.value)
    assert embedding_path.read_bytes() == before
    corrupt, _ = kit.check_saved_files(small_disk / "embeddings", small_disk / "logs")
    assert corrupt == []

    filler.unlink()  # space again: the same run resumes and finishes
    result = train_embedding(demo_model, config, small_disk / "embeddings")
    assert result.stop_reason == "finished" and load_embedding_file(embedding_path).step == 3
