"""BLIP captioning through the real transformers path, with a tiny random BLIP saved to disk."""

import json

import numpy as np
import pytest
from PIL import Image

from ti.captioning import BlipCaptioner, clean_caption, hub_offline, save_tiny_blip
from ti.errors import TIError
from ti.preprocess import PreprocessConfig, preprocess_folder

TINY_WORDS = set("a an the of photo picture painting cat dog house tree red blue green sky on with in and man woman".split())


@pytest.fixture(scope="module")
def tiny_blip_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture(scope="module")
def tiny_captioner(tiny_blip_dir):
    return BlipCaptioner.from_pretrained(str(tiny_blip_dir), device="cpu")


def picture(seed=0, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_tiny_blip_folder_has_the_real_layout(tiny_blip_dir):
    names = {p.name for p in tiny_blip_dir.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "processor_config.json"} <= names or {
        "config.json", "model.safetensors", "vocab.txt", "preprocessor_config.json"} <= names  # fmt: skip
    assert json.loads((tiny_blip_dir / "config.json").read_text())["model_type"] == "blip"


def test_captions_a_picture(tiny_captioner):
    caption = tiny_captioner.caption(picture())
    assert isinstance(caption, str) and caption, "the tiny model should emit some vocabulary words"
    assert set(caption.split()) <= TINY_WORDS  # special tokens are stripped
    assert tiny_captioner.caption(picture()) == caption  # greedy decoding: deterministic
    assert len(caption.split()) <= tiny_captioner.max_length


def test_any_mode_and_size_is_accepted(tiny_captioner):
    for image in (picture(1, (300, 20)), picture(2).convert("L"), picture(3).convert("RGBA")):
        assert isinstance(tiny_captioner.caption(image), str)


def test_generation_settings_are_a1111s_clamped_to_the_model(tiny_blip_dir, tiny_captioner):
    assert (tiny_captioner.num_beams, tiny_captioner.min_length, tiny_captioner.max_length) == (1, 24, 40)
    short = BlipCaptioner(tiny_captioner.model, tiny_captioner.processor, min_length=30, max_length=10)
    assert (short.min_length, short.max_length) == (10, 10)
    assert len(short.caption(picture()).split()) <= 10


def test_missing_folder_says_how_to_get_the_model(tmp_path):
    with pytest.raises(TIError) as caught:
        BlipCaptioner.from_pretrained(str(tmp_path / "models" / "BLIP"))
    message = str(caught.value)
    assert "not found" in message and "hf download Salesforce/blip-image-captioning-base" in message
    assert "--caption-model" in message


def test_hub_id_not_in_cache_offline_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    with pytest.raises(TIError) as caught:
        BlipCaptioner.from_pretrained("ti-studio-tests/no-such-blip")
    message = str(caught.value)
    assert "'ti-studio-tests/no-such-blip' is not available offline" in message
    assert "hf download" in message and "--caption-model" in message


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(TIError, match="expected a folder"):
        BlipCaptioner.from_pretrained(tmp_path / "model.bin")


def test_a_folder_of_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(TIError, match="expected a BLIP captioning model, found model type 'bert'"):
        BlipCaptioner.from_pretrained(tmp_path)


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(TIError, match="could not be loaded"):
        BlipCaptioner.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("arafed man sitting on a bench", "man sitting on a bench"),
        ("there is araffe woman  with a hat", "there is woman with a hat"),
        ("a photo of a  cat\n", "a photo of a cat"),
        ("a parafe of words", "a parafe of words"),  # only whole words starting with "araf"
    ],
)
def test_clean_caption(raw, cleaned):
    assert clean_caption(raw) == cleaned


def test_preprocess_loads_blip_from_the_config(tmp_path, tiny_blip_dir, tiny_captioner):
    source = tmp_path / "src"
    source.mkdir()
    picture(5, (80, 80)).save(source / "pic.png")
    config = PreprocessConfig(source=source, destination=tmp_path / "dst", width=64, height=64, caption=True,
                              caption_model=str(tiny_blip_dir), flip=True)  # fmt: skip
    result = preprocess_folder(config)  # no captioner given: loaded from config.caption_model
    assert [p.name for p in result.captions] == ["00000-0-pic.txt", "00000-1-pic.txt"]
    written = Image.open(result.images[0]).convert("RGB")
    expected = tiny_captioner.caption(written)  # PNG is lossless: the same pixels give the same caption
    assert result.captions[0].read_text(encoding="utf-8") == expected
    assert result.captions[1].read_text(encoding="utf-8") == expected
