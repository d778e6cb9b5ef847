"""Model loading: demo, diffusers folder, bad inputs; hashes."""

import hashlib

import pytest
import torch

from ti.config import ModelConfig
from ti.errors import ConfigError, ModelLoadError
from ti.hashes import HashCache, legacy_model_hash, sha256_file
from ti.pipeline import default_model_source, find_checkpoints, load_model


def test_demo_model_loads_and_reports_itself():
    model = load_model(ModelConfig(model="demo", device="cpu"))
    assert model.is_demo and model.name == "demo"
    assert model.text_width == 32 and model.family == "unknown"
    assert len(model.tokenizer) > 2
    assert len(model.short_hash) == 10
    # the demo is built from fixed seeds: the same hash every time
    assert load_model(ModelConfig(model="demo", device="cpu")).sha256 == model.sha256


def test_diffusers_folder_round_trip(tiny_pipe, tmp_path):
    folder = tmp_path / "tiny-sd"
    tiny_pipe.save_pretrained(folder)
    cache = HashCache(tmp_path / "cache.json")
    model = load_model(ModelConfig(model=str(folder), device="cpu"), cache)
    assert model.name == "tiny-sd" and not model.is_demo
    assert model.text_width == 32
    again = load_model(ModelConfig(model=str(folder), device="cpu"), HashCache(tmp_path / "cache.json"))
    assert again.sha256 == model.sha256
    ids = torch.tensor([[model.tokenizer.bos_token_id, model.tokenizer.eos_token_id]])
    torch.testing.assert_close(model.text_encoder(ids)[0], tiny_pipe.text_encoder(ids)[0])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.safetensors", "no such file or folder"),
        (lambda p: (p / "empty-dir").mkdir() or p / "empty-dir", "not a diffusers pipeline"),
        (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "expected a .safetensors or .ckpt"),
        (lambda p: (p / "broken.safetensors").write_bytes(b"\x00garbage" * 100) and p / "broken.safetensors",
         "could not load a Stable Diffusion model"),
    ],
)
def test_bad_model_paths_give_one_clear_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelConfig(model=str(path), device="cpu"))
    text = str(info.value)
    assert str(path) in text and message in text
    assert "\n" not in text


def test_precision_is_validated():
    with pytest.raises(ConfigError, match="precision"):
        ModelConfig(model="demo", precision="fp8")


def test_hashes_match_a1111_definitions(tmp_path):
    data = bytes(range(256)) * 8192  # 2 MiB
    path = tmp_path / "model.ckpt"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert legacy_model_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert legacy_model_hash(tmp_path / "nope.ckpt") == "NOFILE"


def test_hash_cache_reuses_until_file_changes(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"one")
    cache = HashCache(tmp_path / "c.json")
    first = cache.sha256(path)
    path.write_bytes(b"two!")
    assert cache.sha256(path) != first


def test_default_model_is_first_checkpoint_else_demo(tmp_path):
    assert default_model_source(tmp_path) == "demo"
    (tmp_path / "b.safetensors").write_bytes(b"x")
    (tmp_path / "a.ckpt").write_bytes(b"x")
    assert [p.name for p in find_checkpoints(tmp_path)] == ["a.ckpt", "b.safetensors"]
    assert default_model_source(tmp_path).endswith("a.ckpt")
