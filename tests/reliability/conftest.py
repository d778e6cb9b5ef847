"""Reliability suite (issue #6): hostile and damaged files, kill -9, full disks, names, the server.

reliability_kit.py (builders shared with benchmarks/soak_reliability.py) sits beside this file;
pytest's importlib mode does not put test folders on sys.path, so this does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def demo_model(tiny_pipe):
    """The demo pipeline as a LoadedModel (32-wide text encoder), shared by the suite."""
    from ti.pipeline import LoadedModel, demo_sha256

    return LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256=demo_sha256(tiny_pipe),
                       device=torch.device("cpu"), dtype=torch.float32, is_demo=True)


class UiHarness:
    """The real Blocks app (ui.build_app) in-process, its callbacks called as the page calls them."""

    def __init__(self, services, app):
        self.services, self.app = services, app

    def function(self, name: str):
        """The callback called `name`, or whose qualified name is `name` ("build_model_bar.<locals>.on_refresh")."""
        matches = [block_fn for block_fn in self.app.fns.values()
                   if name in (block_fn.name, getattr(block_fn.fn, "__qualname__", None))]
        assert len(matches) == 1, f"{len(matches)} callbacks named {name}"
        return matches[0]

    def call(self, name: str, **changes):
        """Call callback `name` with every input at its widget default, `changes` by elem_id or label."""
        block_fn = self.function(name)
        values = []
        for component in block_fn.inputs:
            keys = {getattr(component, "elem_id", None), getattr(component, "label", None)}
            chosen = [changes[key] for key in keys if key in changes]
            values.append(chosen[0] if chosen else component.value)
        return block_fn.fn(*values)


@pytest.fixture
def ui(tmp_path, demo_model):
    """A UiHarness over fresh folders in tmp_path, sharing the session's demo model."""
    from ti.config import ModelConfig
    from ti.library import EmbeddingLibrary
    from ui import build_app
    from ui.services import AppPaths, AppServices

    paths = AppPaths(embeddings_dir=tmp_path / "embeddings", models_dir=tmp_path / "models",
                     hypernetwork_dir=tmp_path / "hypernetworks", outputs_dir=tmp_path / "outputs",
                     log_dir=tmp_path / "logs", cache_file=tmp_path / "hashes.json",
                     templates_dir=Path(__file__).resolve().parents[2] / "textual_inversion_templates")
    for folder in (paths.embeddings_dir, paths.models_dir, paths.hypernetwork_dir):
        folder.mkdir()
    library = EmbeddingLibrary(paths.embeddings_dir, expected_width=demo_model.text_width)
    services = AppServices(paths=paths, model=demo_model, model_config=ModelConfig(model="demo"), library=library)
    harness = UiHarness(services, build_app(services))
    yield harness
    services.jobs.stop()
    services.jobs.wait(60)
