"""Fixtures for training tests: the tiny demo model, small image folders, a fresh embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ti.embedding import Embedding
from ti.formats import save_embedding_file
from ti.pipeline import LoadedModel, demo_sha256

REPO_ROOT = Path(__file__).resolve().parents[3]
TEMPLATES_DIR = REPO_ROOT / "textual_inversion_templates"
NAME = "mytok"


@pytest.fixture(scope="session")
def demo_model(tiny_pipe) -> LoadedModel:
    return LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                       device=torch.device("cpu"), dtype=torch.float32, is_demo=True)


def write_images(folder: Path, count: int, size=(64, 64), mode="RGB", seed: int = 0, names=None) -> list[Path]:
    """Random-noise pictures named like A1111's preprocess output ('00000-0-a red car.png')."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = len(mode)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        name = names[index] if names else f"{index:05d}-0-a red car, blue sky, tree.png"
        path = folder / name
        Image.fromarray(pixels, mode=mode).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    write_images(folder, 4)
    return folder


def make_embedding(embeddings_dir: Path, name: str = NAME, num_vectors: int = 2, width: int = 32,
                   step: int = 0) -> Path:
    """embeddings_dir/<name>.pt as `python -m ti create` would leave it (fixed random vectors)."""
    generator = torch.Generator().manual_seed(1234)
    vectors = torch.randn(num_vectors, width, generator=generator) * 0.02
    return save_embedding_file(Embedding(name, vectors=vectors, step=step), embeddings_dir / f"{name}.pt")


@pytest.fixture
def embeddings_dir(tmp_path) -> Path:
    folder = tmp_path / "embeddings"
    folder.mkdir()
    make_embedding(folder)
    return folder


def small_config(data_dir: Path, tmp_path: Path, **overrides):
    """A TrainConfig sized for the tiny model: 64 px, no saves or previews unless asked."""
    from ti.train import TrainConfig

    values = dict(name=NAME, data_dir=data_dir, width=64, height=64, max_steps=4, save_every=0, preview_every=0,
                  log_dir=str(tmp_path / "logs"), templates_dir=str(TEMPLATES_DIR), preview_steps=1)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def kit(tmp_path):
    """The helpers above for test modules (pytest's importlib mode cannot import conftest)."""
    from types import SimpleNamespace

    def config(data_dir: Path, **overrides):
        return small_config(data_dir, tmp_path, **overrides)

    return SimpleNamespace(name=NAME, templates_dir=TEMPLATES_DIR, write_images=write_images,
                           make_embedding=make_embedding, config=config)
