"""Every file we write lands whole: written to a temp file, fsynced, then renamed into place.

The check watches os.fsync and os.replace while real work runs (generate and save, preprocess,
train with copies, previews and image embeddings, the hash cache), then asks of every file
that work left behind: did it arrive by a rename from a temp file that had been fsynced?
The loss CSV is the one exception, by design: it grows by one short append per step (a
rewrite per step would be quadratic in the run's length), so a crash costs at most its last line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import reliability_kit as kit
from ti.config import GenerateConfig
from ti.generate import save_generated, txt2img
from ti.hashes import HashCache
from ti.preprocess import preprocess_folder
from ti.preprocess_config import PreprocessConfig
from ti.train import TrainConfig, train_embedding

APPEND_ONLY = {"textual_inversion_loss.csv"}


@pytest.fixture
def arrivals(monkeypatch) -> dict[Path, bool]:
    """{final path: whether the file renamed onto it had been fsynced}, for every os.replace."""
    synced, landed = set(), {}
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        synced.add(os.fstat(descriptor).st_ino)
        return real_fsync(descriptor)

    def replace(source, destination, *args, **kwargs):
        landed[Path(destination).resolve()] = os.stat(source).st_ino in synced
        return real_replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return landed


def _assert_every_file_arrived_whole(folder: Path, arrivals: dict[Path, bool]) -> list[str]:
    written = [p for p in folder.rglob("*") if p.is_file() and p.name not in APPEND_ONLY]
    assert written, f"nothing was written under {folder}"
    not_atomic = [str(p.relative_to(folder)) for p in written if arrivals.get(p.resolve()) is not True]
    assert not_atomic == [], "written in place, or renamed before fsync"
    return [p.suffix for p in written]


def test_generated_pictures_arrive_whole(tmp_path, demo_model, arrivals):
    result = txt2img(demo_model, {}, GenerateConfig(prompt="a tree", steps=2, width=64, height=64, seed=3, batch_size=2))
    save_generated(result, tmp_path / "outputs")
    assert _assert_every_file_arrived_whole(tmp_path / "outputs", arrivals) == [".png", ".png"]


def test_preprocessed_pictures_and_captions_arrive_whole(tmp_path, arrivals):
    kit.write_dataset(tmp_path / "source")
    for index, source in enumerate(sorted((tmp_path / "source").glob("*.png"))):
        source.with_suffix(".txt").write_text(f"a red thing {index}", encoding="utf-8")
    preprocess_folder(PreprocessConfig(source=tmp_path / "source", destination=tmp_path / "done", width=64, height=64,
                                       existing_caption="copy", flip=True))
    assert set(_assert_every_file_arrived_whole(tmp_path / "done", arrivals)) == {".png", ".txt"}


def test_training_files_arrive_whole(tmp_path, demo_model, arrivals):
    kit.prepare_training_folder(tmp_path, "tok")
    arrivals.clear()  # only what training writes
    config = TrainConfig(name="tok", data_dir=tmp_path / "data", width=64, height=64, max_steps=2, save_every=1,
                         preview_every=1, png_embedding=True, log_dir=str(tmp_path / "logs"),
                         templates_dir=str(kit.REPO_ROOT / "textual_inversion_templates"))
    train_embedding(demo_model, config, tmp_path / "embeddings")
    suffixes = _assert_every_file_arrived_whole(tmp_path / "logs", arrivals)
    assert {".pt", ".png", ".json"} <= set(suffixes)
    _assert_every_file_arrived_whole(tmp_path / "embeddings", arrivals)  # tok.pt and its .optim


def test_the_hash_cache_arrives_whole(tmp_path, arrivals):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1024)
    HashCache(tmp_path / "cache" / "hashes.json").sha256(tmp_path / "model.safetensors")
    _assert_every_file_arrived_whole(tmp_path / "cache", arrivals)
