"""Single-file checkpoints (A1111's layout): SD 1.x and SDXL base load, told apart by their keys;
refiners and inpainting models are refused with the reason. The files are written from the tiny
pipelines by tests/ti/ldm_checkpoint.py, so every tensor can be compared with the folder they came from."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: ldm_checkpoint.py sits beside this file
from ldm_checkpoint import pipeline_to_ldm  # noqa: E402
from ti.checkpoint_kind import CheckpointKind, kind_from_keys, read_checkpoint_kind
from ti.config import GenerateConfig, ModelConfig
from ti.embedding import Embedding
from ti.errors import ModelLoadError
from ti.generate import txt2img
from ti.hashes import HashCache, sha256_file
from ti.pipeline import load_model

ROOT = Path(__file__).resolve().parents[2]

_XL = {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (10, 768),
       "conditioner.embedders.1.model.positional_embedding": (77, 1280),
       "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
_SD = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (10, 768),
       "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
_REFINER = {"conditioner.embedders.0.model.positional_embedding": (77, 1280),
            "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3)}


@pytest.mark.parametrize("shapes, family, refused_because", [
    (_XL, "sdxl", None),
    (_SD, "sd", None),
    ({**_SD, "cond_stage_model.model.token_embedding.weight": (10, 1024)}, "sd", None),  # SD 2 (OpenCLIP)
    (_REFINER, "sdxl", "refiner"),
    ({**_XL, "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, "sdxl", "inpainting"),
    ({**_SD, "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, "sd", "inpainting"),
    ({**_SD, "model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3)}, "sd", "instruct-pix2pix"),
    ({"unet.conv_in.weight": (320, 4, 3, 3)}, "unknown", None),
])
def test_kind_from_keys(shapes, family, refused_because):
    kind = kind_from_keys(shapes)
    assert kind.family == family
    if refused_because is None:
        assert kind.refusal is None
    else:
        assert refused_because in kind.refusal


@pytest.fixture(scope="module")
def xl_files(tmp_path_factory):
    from ti.demo import build_demo_sdxl_pipeline

    folder = tmp_path_factory.mktemp("xl")
    pipe = build_demo_sdxl_pipeline()
    pipe.save_pretrained(folder / "tiny-xl")
    save_file(pipeline_to_ldm(pipe), folder / "tiny-xl.safetensors")
    return folder / "tiny-xl", folder / "tiny-xl.safetensors"


def _assert_same_weights(loaded, original):
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(loaded, name, None), getattr(original, name, None)
        assert (ours is None) == (theirs is None), name
        if ours is None:
            continue
        mine, expected = ours.state_dict(), theirs.state_dict()
        assert mine.keys() == expected.keys(), name
        assert all(torch.equal(mine[k], expected[k]) for k in expected), name


def test_sdxl_single_file_loads_as_the_folder_it_came_from(xl_files, tmp_path):
    folder, checkpoint = xl_files
    from_folder = load_model(ModelConfig(model=str(folder), device="cpu"))
    model = load_model(ModelConfig(model=str(checkpoint), model_config=str(folder), device="cpu"),
                       HashCache(tmp_path / "cache.json"))
    assert model.is_sdxl and model.family == "sdxl" and model.text_width == 768 + 1280
    assert model.name == "tiny-xl" and model.sha256 == sha256_file(checkpoint)
    assert model.tokenizer_2.pad_token == "!" and len(model.tokenizer) > 2
    _assert_same_weights(model.pipe, from_folder.pipe)

    # The same picture, with an SDXL embedding in the prompt, as from the diffusers folder.
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(2, 2048, generator=generator) * 0.02
    embedding = Embedding("xltok", vectors, is_sdxl=True)
    config = GenerateConfig(prompt="a xltok tree", negative_prompt="", steps=2, width=64, height=64, seed=3)
    ours = txt2img(model, {"xltok": embedding}, config)
    theirs = txt2img(from_folder, {"xltok": embedding}, config)
    np.testing.assert_array_equal(np.asarray(ours.images[0].image), np.asarray(theirs.images[0].image))
    assert "Model: tiny-xl" in ours.images[0].infotext
    assert f"Model hash: {model.short_hash}" in ours.images[0].infotext


def test_sdxl_ckpt_is_recognised_without_unpickling_code(xl_files, tmp_path):
    folder, checkpoint = xl_files
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny-xl.ckpt"
    torch.save({"state_dict": load_file(checkpoint)}, ckpt)
    assert read_checkpoint_kind(ckpt) == CheckpointKind("sdxl")
    model = load_model(ModelConfig(model=str(ckpt), model_config=str(folder), device="cpu"))
    assert model.is_sdxl and model.name == "tiny-xl"


def test_sd1_single_file_loads_as_the_folder_it_came_from(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "tiny-sd")
    save_file(pipeline_to_ldm(tiny_pipe), tmp_path / "tiny-sd.safetensors")
    assert read_checkpoint_kind(tmp_path / "tiny-sd.safetensors") == CheckpointKind("sd")
    model = load_model(ModelConfig(model=str(tmp_path / "tiny-sd.safetensors"), model_config=str(tmp_path / "tiny-sd"),
                                   device="cpu"))
    assert not model.is_sdxl
    _assert_same_weights(model.pipe, tiny_pipe)


def test_offline_sdxl_file_without_configs_says_to_pass_model_config(xl_files):
    _, checkpoint = xl_files
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelConfig(model=str(checkpoint), device="cpu"))
    assert str(checkpoint) in str(info.value) and "--model-config" in str(info.value)


def test_model_config_of_the_other_family_is_refused_before_loading(xl_files, tiny_pipe, tmp_path):
    _, checkpoint = xl_files
    tiny_pipe.save_pretrained(tmp_path / "sd1-configs")
    with pytest.raises(ModelLoadError, match="an SDXL checkpoint, but --model-config .* StableDiffusionPipeline"):
        load_model(ModelConfig(model=str(checkpoint), model_config=str(tmp_path / "sd1-configs"), device="cpu"))


@pytest.mark.parametrize("shapes, reason", [(_REFINER, "SDXL refiner"),
                                            ({**_SD, "model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)},
                                             "inpainting")])
def test_refiners_and_inpainting_models_are_refused_with_the_reason(tmp_path, shapes, reason):
    path = tmp_path / "other.safetensors"
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, path)
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelConfig(model=str(path), device="cpu"))
    assert str(path) in str(info.value) and reason in str(info.value) and "\n" not in str(info.value)


def test_cli_generates_from_an_sdxl_single_file(xl_files, tmp_path):
    folder, checkpoint = xl_files
    out = tmp_path / "xl.png"
    done = subprocess.run([sys.executable, "-m", "ti", "generate", "a tree", "--model", str(checkpoint),
                           "--model-config", str(folder), "--steps", "1", "--size", "64x64", "--seed", "1",
                           "--out", str(out), "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, env={**__import__("os").environ,
                                                                             "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    from PIL import Image

    assert "Model: tiny-xl" in Image.open(out).info["parameters"]


def test_native_size_is_the_unets_sample_size_in_pixels(xl_files, demo_model_for_size):
    import copy

    from ti.pipeline import LoadedModel

    folder, _ = xl_files
    assert demo_model_for_size.native_size == 512  # SD 1.x: 64 latents
    model = load_model(ModelConfig(model=str(folder), device="cpu"))
    pipe = copy.copy(model.pipe)
    pipe.unet = copy.deepcopy(model.pipe.unet)
    pipe.unet.register_to_config(sample_size=128)  # SDXL base's config
    assert LoadedModel(pipe=pipe, name="x", source="x", sha256="0" * 64, device=torch.device("cpu"),
                       dtype=torch.float32).native_size == 1024


@pytest.fixture
def demo_model_for_size():
    return load_model(ModelConfig(model="demo", device="cpu"))


def test_generate_without_a_size_uses_the_models_native_size(xl_files, tmp_path):
    import json
    import shutil

    from PIL import Image

    from ti.cli import main

    folder, _ = xl_files
    small = tmp_path / "small-xl"
    shutil.copytree(folder, small)
    config_path = small / "unet" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "sample_size": 9}))  # 72 px
    common = ["--model", str(small), "--steps", "1", "--seed", "1", "--device", "cpu", "--embeddings-dir",
              str(tmp_path / "e")]
    assert main(["generate", "a tree", *common, "--out", str(tmp_path / "native.png")]) == 0
    assert Image.open(tmp_path / "native.png").size == (72, 72)
    assert main(["generate", "a tree", *common, "--size", "64x80", "--out", str(tmp_path / "given.png")]) == 0
    assert Image.open(tmp_path / "given.png").size == (64, 80)
    assert main(["generate", "--infotext", str(tmp_path / "given.png"), *common[:2], "--device", "cpu",
                 "--out", str(tmp_path / "pasted.png")]) == 0
    assert Image.open(tmp_path / "pasted.png").size == (64, 80)  # the infotext's size wins over the native one


class _Payload:
    """Unpickling this would run code: it writes the file its path names."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_ckpt_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    kind = read_checkpoint_kind(path)
    assert kind.family == "unknown" and "refused: it holds pickled objects that are not tensors" in kind.refusal
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelConfig(model=str(path), model_config=str(tmp_path), device="cpu"))
    message = str(info.value)
    assert message.startswith(f"{path}: refused:") and "nothing from it was run" in message and "\n" not in message
    assert "it names io.open" in message
    assert not marker.exists()
