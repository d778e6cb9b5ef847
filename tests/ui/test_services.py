"""The shared model in AppServices: switching it safely while tabs use it."""

import gc
import threading
import weakref

import pytest

import ui.services as services_module
from ti.config import ModelConfig
from ti.errors import ModelLoadError
from ti.library import EmbeddingLibrary
from ti.pipeline import load_model
from ui.services import AppPaths, AppServices, ModelBusy
from ui.train_widgets import training_work


def _services(tmp_path) -> AppServices:
    """Services owning their own demo model (no other reference to it), so freeing is visible."""
    (tmp_path / "embeddings").mkdir(exist_ok=True)
    model = load_model(ModelConfig(model="demo", device="cpu"))
    library = EmbeddingLibrary(tmp_path / "embeddings", expected_width=model.text_width)
    return AppServices(paths=AppPaths(embeddings_dir=tmp_path / "embeddings", models_dir=tmp_path / "models",
                                      cache_file=tmp_path / "hashes.json"),
                       model=model, model_config=ModelConfig(model="demo", device="cpu"), library=library)


def _another_model(source: str):
    model = load_model(ModelConfig(model="demo", device="cpu"))
    model.source = model.name = source
    return model


def test_the_old_model_is_gone_before_the_new_one_loads(tmp_path, monkeypatch):
    services = _services(tmp_path)
    old_unet = weakref.ref(services.model.pipe.unet)
    alive_while_loading = []

    def load(config, hash_cache=None):
        gc.collect()
        alive_while_loading.append(old_unet() is not None)
        return _another_model(config.model)

    monkeypatch.setattr(services_module, "load_model", load)
    assert services.switch_model("other").source == "other"
    assert alive_while_loading == [False]  # one model in memory at a time, not two


def test_a_switch_is_refused_while_a_training_run_uses_the_model(tmp_path, monkeypatch):
    services = _services(tmp_path)
    monkeypatch.setattr(services_module, "load_model", lambda config, hash_cache=None: _another_model(config.model))
    training, release = threading.Event(), threading.Event()
    trained_with = []

    def fake_train(model, config, folder, hooks):
        trained_with.append(model.source)
        training.set()
        assert release.wait(30)

    class _Config:
        max_steps = 10

    services.jobs.start("train-embedding", "Training", training_work(fake_train, services.using_model, _Config(), tmp_path))
    assert training.wait(30)
    with pytest.raises(ModelBusy, match="interrupt it"):
        services.switch_model("other")
    assert services.model.source == "demo"
    release.set()
    services.jobs.wait(30)
    assert services.switch_model("other").source == "other"  # once it has ended
    assert trained_with == ["demo"]


def test_a_switch_waits_for_a_generation_and_holds_new_ones_back(tmp_path, monkeypatch):
    services = _services(tmp_path)
    other = _another_model("other")  # loaded ahead: the switch itself is instant
    monkeypatch.setattr(services_module, "load_model", lambda config, hash_cache=None: other)
    generating, switched = threading.Event(), threading.Event()
    seen = []

    def generation():
        with services.using_model() as model:
            generating.set()
            assert not switched.wait(0.3)  # the switch waits for this picture
            seen.append(model.source)

    first = threading.Thread(target=generation)
    first.start()
    assert generating.wait(30)
    switcher = threading.Thread(target=lambda: (services.switch_model("other"), switched.set()))
    switcher.start()
    first.join(30)
    switcher.join(30)
    with services.using_model() as model:
        seen.append(model.source)
    assert seen == ["demo", "other"]


def test_when_the_new_model_fails_to_load_the_old_one_comes_back(tmp_path, monkeypatch):
    services = _services(tmp_path)
    real_load = services_module.load_model

    def load(config, hash_cache=None):
        if config.model == "broken.safetensors":
            raise ModelLoadError("broken.safetensors: could not load a Stable Diffusion model (truncated)")
        return real_load(config, hash_cache)

    monkeypatch.setattr(services_module, "load_model", load)
    with pytest.raises(ModelLoadError, match="truncated"):
        services.switch_model("broken.safetensors")
    assert services.model.source == "demo" and services.model_config.model == "demo"
    with services.using_model() as model:
        assert model.pipe is not None


def test_switching_to_an_sdxl_single_file_uses_the_startup_model_config(tmp_path):
    import sys
    from pathlib import Path

    from safetensors.torch import save_file

    from ti.demo import build_demo_sdxl_pipeline

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ti"))
    from ldm_checkpoint import pipeline_to_ldm

    pipe = build_demo_sdxl_pipeline()
    pipe.save_pretrained(tmp_path / "xl-configs")
    (tmp_path / "models").mkdir()
    save_file(pipeline_to_ldm(pipe), tmp_path / "models" / "tiny-xl.safetensors")
    services = _services(tmp_path)
    services.model_config = ModelConfig(model="demo", model_config=str(tmp_path / "xl-configs"), device="cpu")
    model = services.switch_model(str(tmp_path / "models" / "tiny-xl.safetensors"))
    assert model.is_sdxl and model.name == "tiny-xl" and services.model.family == "sdxl"
    assert services.library.expected_width == 2048


@pytest.mark.parametrize("size, native, expected", [
    ((512, 512), 1024, (1024, 1024)),  # SD 1.x's default, not chosen: SDXL's
    ((1024, 1024), 512, (512, 512)),
    ((768, 768), 1024, (1024, 1024)),
    ((640, 512), 1024, (640, 512)),  # the user's own size stays
    ((896, 896), 512, (896, 896)),
])
def test_txt2img_size_follows_the_model_unless_the_user_chose_one(size, native, expected):
    from ui.model_bar import size_for_new_model

    assert size_for_new_model(*size, native) == expected
