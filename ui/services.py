"""AppServices: the model, the embeddings library, folders and the job runner, passed to each tab."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ti.config import ModelConfig
from ti.hashes import HashCache
from ti.hypernetwork import HypernetworkLibrary
from ti.library import EmbeddingLibrary, is_utf8_name, printable_path
from ti.pipeline import LoadedModel, find_checkpoints, load_model
from ui.jobs import JobRunner

log = logging.getLogger(__name__)


@dataclass
class AppPaths:
    embeddings_dir: Path = Path("embeddings")
    models_dir: Path = Path("models/Stable-diffusion")
    hypernetwork_dir: Path = Path("models/hypernetworks")
    outputs_dir: Path = Path("outputs")
    log_dir: Path = Path("textual_inversion")
    templates_dir: Path = Path("textual_inversion_templates")
    cache_file: Path = Path(".cache/hashes.json")


@dataclass
class AppServices:
    """Everything the tabs share. Built once by app.py (or a test) and passed in explicitly."""

    paths: AppPaths
    model: LoadedModel
    model_config: ModelConfig
    library: EmbeddingLibrary
    hypernetworks: HypernetworkLibrary | None = None
    jobs: JobRunner = field(default_factory=JobRunner)
    hash_cache: HashCache = field(default_factory=HashCache)
    _model_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, paths: AppPaths, model_config: ModelConfig) -> "AppServices":
        hash_cache = HashCache(paths.cache_file)
        model = load_model(model_config, hash_cache)
        library = EmbeddingLibrary(paths.embeddings_dir, expected_width=model.text_width)
        library.refresh()
        return cls(paths=paths, model=model, model_config=model_config, library=library, hash_cache=hash_cache,
                   hypernetworks=HypernetworkLibrary(paths.hypernetwork_dir))

    def __post_init__(self):
        if self.hypernetworks is None:
            self.hypernetworks = HypernetworkLibrary(self.paths.hypernetwork_dir)

    def hypernetwork_names(self) -> list[str]:
        return list(self.hypernetworks.names())

    def model_choices(self) -> list[str]:
        """'demo' plus every checkpoint under models/Stable-diffusion (and the one loaded now).

        Paths that are not valid UTF-8 are left out (with a log line): the page's JSON cannot
        carry them, and one such name in the list would stop the page from loading.
        """
        choices = ["demo"]
        for path in find_checkpoints(self.paths.models_dir):
            if is_utf8_name(str(path)):
                choices.append(str(path))
            else:
                log.warning("not offering %s: its name is not valid UTF-8; rename it", printable_path(path))
        if self.model.source not in choices:
            choices.append(self.model.source)
        return choices

    def switch_model(self, source: str) -> LoadedModel:
        """Load another model; on failure the current one stays (the error propagates)."""
        with self._model_lock:
            if source == self.model.source:
                return self.model
            config = ModelConfig(model=source, model_config=self.model_config.model_config,
                                 device=self.model_config.device, precision=self.model_config.precision)
            model = load_model(config, self.hash_cache)
            self.model, self.model_config = model, config
            self.library.set_expected_width(model.text_width)
            self.library.refresh(force=True)
            return model
