"""AppServices: the model, the embeddings library, folders and the job runner, passed to each tab."""

from __future__ import annotations

import gc
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ti.config import ModelConfig
from ti.errors import TIError
from ti.hashes import HashCache
from ti.hypernetwork import HypernetworkLibrary
from ti.library import EmbeddingLibrary, is_utf8_name, printable_path
from ti.pipeline import LoadedModel, find_checkpoints, load_model
from ui.jobs import JobRunner

log = logging.getLogger(__name__)


class ModelBusy(TIError):
    pass


class ModelUsers:
    """Who is using the shared model now, so that a model switch never pulls it from under them.

    Generations and training runs hold `using(purpose)` while they run. A switch (`exclusive`)
    is refused while a training run uses the model (it may run for hours: interrupt it first),
    waits for generations to finish, and holds new users back until the new model is in.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._users: Counter[str] = Counter()
        self._switching = False

    @contextmanager
    def using(self, purpose: str) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._switching)
            self._users[purpose] += 1
        try:
            yield
        finally:
            with self._condition:
                self._users[purpose] -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._switching)
            if self._users["training"]:
                raise ModelBusy("a training run is using this model: interrupt it (or let it finish) "
                                "before switching to another model")
            self._switching = True
            self._condition.wait_for(lambda: not any(self._users.values()))
        try:
            yield
        finally:
            with self._condition:
                self._switching = False
                self._condition.notify_all()


@dataclass
class AppPaths:
    embeddings_dir: Path = Path("embeddings")
    models_dir: Path = Path("models/Stable-diffusion")
    hypernetwork_dir: Path = Path("models/hypernetworks")
    outputs_dir: Path = Path("outputs")
    log_dir: Path = Path("textual_inversion")
    templates_dir: Path = Path("textual_inversion_templates")
    cache_file: Path = Path(".cache/hashes.json")
    # Set when the page is open to the network without a login (--listen, no --gradio-auth): the
    # folder fields (preprocess source/destination, dataset folder) must lie inside it.
    data_root: Path | None = None


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
    model_users: ModelUsers = field(default_factory=ModelUsers)
    # One generation at a time, from the page or the HTTP API.
    generation_lock: threading.Lock = field(default_factory=threading.Lock)
    # What the API's POST options set and later txt2img calls use (A1111's sd_hypernetwork).
    api_options: dict = field(default_factory=dict)

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
        if self.model is not None and self.model.source not in choices:
            choices.append(self.model.source)
        return choices

    @contextmanager
    def using_model(self, purpose: str = "generation") -> Iterator[LoadedModel]:
        """The current model, kept from being switched while the block runs ("generation" or
        "training": a switch waits for the first and is refused during the second)."""
        with self.model_users.using(purpose):
            yield self.model

    def switch_model(self, source: str) -> LoadedModel:
        """Load another model in place of this one.

        The old model is let go before the new one loads, so memory holds one model, not two.
        Refused (ModelBusy) while a training run uses the model; waits for generations. If the new
        one fails to load, the old one is loaded again and the error propagates.
        """
        with self.model_users.exclusive():
            if source == self.model.source:
                return self.model
            config = ModelConfig(model=source, model_config=self.model_config.model_config,
                                 device=self.model_config.device, precision=self.model_config.precision)
            previous_config = self.model_config
            self._release_model()
            try:
                model = load_model(config, self.hash_cache)
            except Exception:
                log.warning("could not load %s; loading %s again", source, previous_config.model)
                self.model = load_model(previous_config, self.hash_cache)
                raise
            self.model, self.model_config = model, config
            self.library.set_expected_width(model.text_width)
            self.library.refresh(force=True)
            return model

    def _release_model(self) -> None:
        self.model = None  # the only long-lived reference: users hold theirs only inside using_model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
