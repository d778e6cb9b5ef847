"""SDXL on a tiny SDXL-shaped pipeline (ti.demo.build_demo_sdxl_pipeline; SDXL's real text widths,
768 and 1280): loading, conditioning equal to diffusers', SDXL embeddings in prompts, generation."""

import copy
import json

import numpy as np
import pytest
import torch

from ti.conditioning import SDXLPromptEncoder
from ti.config import GenerateConfig, ModelConfig
from ti.embedding import Embedding
from ti.errors import ModelLoadError, TrainingError
from ti.formats import load_embedding_file, save_embedding_file
from ti.generate import txt2img
from ti.library import EmbeddingLibrary
from ti.pipeline import LoadedModel, load_model
from ti.samplers import make_scheduler


@pytest.fixture(scope="module")
def xl_pipe():
    from ti.demo import build_demo_sdxl_pipeline

    return build_demo_sdxl_pipeline()


@pytest.fixture(scope="module")
def demo_model_for_sdxl_tests(tiny_pipe):
    return LoadedModel(pipe=tiny_pipe, name="demo", source="demo", sha256="cd" * 32, device=torch.device("cpu"),
                       dtype=torch.float32)


@pytest.fixture(scope="module")
def xl_model(xl_pipe):
    return LoadedModel(pipe=xl_pipe, name="tiny-xl", source="tiny-xl", sha256="ab" * 32, device=torch.device("cpu"),
                       dtype=torch.float32)


def _sdxl_embedding(name="xltok", count=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return Embedding(name, torch.cat([torch.randn(count, 768, generator=generator) * 0.02,
                                      torch.randn(count, 1280, generator=generator) * 0.02], dim=1), is_sdxl=True,
                     sha256="0123456789ab" * 5 + "0123")


def _ours(pipe, prompt, embeddings=None):
    encoder = SDXLPromptEncoder(pipe.tokenizer, pipe.text_encoder, pipe.tokenizer_2, pipe.text_encoder_2,
                                {n: e.vectors for n, e in (embeddings or {}).items()})
    with torch.no_grad():
        return encoder.encode_parsed([encoder.parse(prompt)])


def test_the_model_says_sdxl_and_takes_2048_wide_embeddings(xl_model):
    assert xl_model.is_sdxl and xl_model.text_width == 2048 and xl_model.family == "sdxl"


@pytest.mark.parametrize("prompt", ["a red tree", "a red tree, blue sky and a house", ""])
def test_our_conditioning_equals_diffusers_encode_prompt(xl_pipe, prompt):
    ours = _ours(xl_pipe, prompt)
    with torch.no_grad():
        context, _, pooled, _ = xl_pipe.encode_prompt(prompt, device=torch.device("cpu"), num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
    assert torch.equal(ours.context, context) and torch.equal(ours.pooled, pooled)


def test_an_sdxl_embedding_in_our_prompt_equals_diffusers_after_its_two_load_calls(xl_pipe):
    """diffusers: load_textual_inversion(clip_l, te1) and (clip_g, te2); ours splices l into te1 and
    g into te2 at the same offsets."""
    embedding = _sdxl_embedding()
    theirs_pipe = copy.deepcopy(xl_pipe)
    parts = embedding.sdxl_parts()
    theirs_pipe.load_textual_inversion(parts["clip_l"], token="xltok", text_encoder=theirs_pipe.text_encoder,
                                       tokenizer=theirs_pipe.tokenizer)
    theirs_pipe.load_textual_inversion(parts["clip_g"], token="xltok", text_encoder=theirs_pipe.text_encoder_2,
                                       tokenizer=theirs_pipe.tokenizer_2)
    with torch.no_grad():
        context, _, pooled, _ = theirs_pipe.encode_prompt("a xltok tree", device=torch.device("cpu"),
                                                          num_images_per_prompt=1, do_classifier_free_guidance=False)
    ours = _ours(xl_pipe, "a xltok tree", {"xltok": embedding})
    assert torch.allclose(ours.context, context, atol=1e-5) and torch.allclose(ours.pooled, pooled, atol=1e-5)
    assert not torch.allclose(ours.context, _ours(xl_pipe, "a tree").context[:, :77], atol=1e-3)


def _count_forwards(module, monkeypatch) -> list[int]:
    calls = []
    original = module.forward

    def counting_forward(input_ids, *args, **kwargs):
        calls.append(int(input_ids.shape[0]))
        return original(input_ids, *args, **kwargs)

    monkeypatch.setattr(module, "forward", counting_forward)
    return calls


@pytest.mark.parametrize("frozen", [("clip_g",), ("clip_l",), ("clip_l", "clip_g")])
def test_a_frozen_encoder_runs_once_per_distinct_chunk_and_gives_the_same_conditioning(xl_pipe, monkeypatch, frozen):
    """Training one half of an embedding (or a hypernetwork) leaves the other encoder's outputs
    constant: they are cached per chunk. Emphasis is over the batch, so it stays outside the cache."""
    embedding = _sdxl_embedding()
    vectors = {"xltok": embedding.vectors}
    long_prompt = ", ".join(["a (red:1.4) xltok tree"] * 14)
    batches = [["a xltok tree", "(blue sky:0.7), a house"], [long_prompt, "a xltok tree"],
               ["(blue sky:0.7), a house", "a xltok tree"]]
    plain = SDXLPromptEncoder(xl_pipe.tokenizer, xl_pipe.text_encoder, xl_pipe.tokenizer_2, xl_pipe.text_encoder_2,
                              vectors)
    cached = SDXLPromptEncoder(xl_pipe.tokenizer, xl_pipe.text_encoder, xl_pipe.tokenizer_2, xl_pipe.text_encoder_2,
                               vectors, frozen_encoders=frozen)
    with torch.no_grad():
        expected = [plain.encode(batch)[0] for batch in batches]
        calls = {name: _count_forwards(module, monkeypatch)
                 for name, module in (("clip_l", xl_pipe.text_encoder), ("clip_g", xl_pipe.text_encoder_2))}
        for _ in range(2):
            for batch, want in zip(batches, expected):
                got = cached.encode(batch)[0]
                assert got.context.shape == want.context.shape
                torch.testing.assert_close(got.context, want.context, rtol=0, atol=2e-5)
                torch.testing.assert_close(got.pooled, want.pooled, rtol=0, atol=2e-5)
    long_chunks = len(plain.parse(long_prompt).chunks)
    assert long_chunks == 2
    distinct_chunks = 2 + long_chunks + 1  # "a xltok tree", the house, the long prompt's, the padding chunk
    for name, seen in calls.items():
        if name in frozen:
            assert seen == [1] * distinct_chunks, name  # one chunk at a time, each once
        else:
            assert sum(seen) == 2 * (2 + 2 * long_chunks + 2), name  # every chunk of every batch, both rounds
    with pytest.raises(ValueError, match="clip_x"):
        SDXLPromptEncoder(xl_pipe.tokenizer, xl_pipe.text_encoder, xl_pipe.tokenizer_2, xl_pipe.text_encoder_2,
                          vectors, frozen_encoders=("clip_x",))


def test_txt2img_gives_diffusers_sdxl_picture_and_an_embedding_changes_it(xl_model, xl_pipe):
    config = GenerateConfig(prompt="a red tree", negative_prompt="blurry", steps=3, width=64, height=64, seed=5,
                            sampler="Euler")
    ours = np.asarray(txt2img(xl_model, {}, config).images[0].image)
    reference = type(xl_pipe)(**{**xl_pipe.components,
                                 "scheduler": make_scheduler("Euler", dict(xl_pipe.scheduler.config))},
                              add_watermarker=False)
    reference.set_progress_bar_config(disable=True)
    latents = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(5)).unsqueeze(0)
    theirs = reference(prompt="a red tree", negative_prompt="blurry", num_inference_steps=3, height=64, width=64,
                       latents=latents, generator=[torch.Generator().manual_seed(5)], guidance_scale=7.0).images[0]
    assert np.array_equal(ours, np.asarray(theirs))
    embedding = _sdxl_embedding(count=3, seed=1)
    embedding.vectors *= 50  # strong enough to move a 3-step picture
    with_it = txt2img(xl_model, {"xltok": embedding}, GenerateConfig(**{**config.to_dict(), "prompt": "a xltok tree"}))
    assert with_it.used_embeddings == ["xltok"]
    assert not np.array_equal(np.asarray(with_it.images[0].image),
                              np.asarray(txt2img(xl_model, {}, GenerateConfig(**{**config.to_dict(),
                                                                                "prompt": "a tree"})).images[0].image))


def test_an_empty_negative_is_zeroed_as_a1111_does(xl_model, xl_pipe):
    seen = []
    handle = xl_pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["encoder_hidden_states"].clone(),
                                                  kwargs["added_cond_kwargs"]["text_embeds"].clone())),
        with_kwargs=True)
    try:
        txt2img(xl_model, {}, GenerateConfig(prompt="a tree", negative_prompt="", steps=1, width=64, height=64, seed=1))
        txt2img(xl_model, {}, GenerateConfig(prompt="a tree", negative_prompt="blurry", steps=1, width=64, height=64,
                                             seed=1))
    finally:
        handle.remove()
    (empty_context, empty_pooled), (blurry_context, blurry_pooled) = seen
    assert not empty_context[:1].any() and not empty_pooled[:1].any()  # negative half: zeros
    assert empty_context[1:].any() and blurry_context[:1].any() and blurry_pooled[:1].any()


def test_sd1_files_are_skipped_and_sdxl_files_used_on_sdxl(xl_model, tmp_path):
    save_embedding_file(_sdxl_embedding("xlstyle"), tmp_path / "xlstyle.safetensors")
    save_embedding_file(Embedding("sd1style", torch.randn(1, 768)), tmp_path / "sd1style.pt")
    snapshot = EmbeddingLibrary(tmp_path, expected_width=xl_model.text_width).refresh()
    assert list(snapshot.embeddings) == ["xlstyle"]
    assert [(s.path.name, s.reason) for s in snapshot.skipped] == [("sd1style.pt", "768 wide; this model needs 2048")]


def test_create_on_sdxl_writes_both_encoders_rows(xl_model, tmp_path):
    from ti.create import create_embedding

    path = create_embedding(xl_model, "xlnew", "red tree", 2, tmp_path)
    assert path.name == "xlnew.safetensors"
    created = load_embedding_file(path)
    ids = xl_model.tokenizer("red tree", add_special_tokens=False)["input_ids"]
    parts = created.sdxl_parts()
    assert torch.equal(parts["clip_l"], xl_model.text_encoder.get_input_embeddings().weight[ids])
    assert torch.equal(parts["clip_g"], xl_model.text_encoder_2.get_input_embeddings().weight[ids])
    assert created.step == 0 and created.checkpoint_hash == xl_model.short_hash


def _xl_training(tmp_path, **options):
    from PIL import Image

    from ti.train import TrainConfig

    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        rng = np.random.default_rng(0)
        for index in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / f"{index}-a red car.png")
    values = dict(name="xltrain", data_dir=data, width=64, height=64, max_steps=2, save_every=0, preview_every=0,
                  log_dir=str(tmp_path / "logs"), learning_rate="0.01")
    return TrainConfig(**{**values, **options})


def test_an_sdxl_embedding_trains_both_halves_saves_its_step_and_resumes_exactly(xl_model, tmp_path):
    from ti.create import create_embedding
    from ti.train import train_embedding

    for folder in ("straight", "resumed"):
        create_embedding(xl_model, "xltrain", "red car", 2, tmp_path / folder)
    start = load_embedding_file(tmp_path / "straight" / "xltrain.safetensors").sdxl_parts()
    result = train_embedding(xl_model, _xl_training(tmp_path, max_steps=4, preview_every=4, png_embedding=False),
                             tmp_path / "straight")
    straight = load_embedding_file(tmp_path / "straight" / "xltrain.safetensors")
    assert result.stop_reason == "finished" and straight.step == 4 and straight.is_sdxl
    parts = straight.sdxl_parts()
    assert not torch.allclose(parts["clip_l"], start["clip_l"]) and not torch.allclose(parts["clip_g"], start["clip_g"])
    [preview] = result.log_dir.glob("images/*.png")
    from PIL import Image

    with Image.open(preview) as picture:
        assert "xltrain-4" in picture.info["parameters"] or "xltrain" in picture.info["parameters"]
    train_embedding(xl_model, _xl_training(tmp_path, max_steps=2), tmp_path / "resumed")
    assert load_embedding_file(tmp_path / "resumed" / "xltrain.safetensors").step == 2
    train_embedding(xl_model, _xl_training(tmp_path, max_steps=4), tmp_path / "resumed")  # optimizer state too
    assert torch.equal(load_embedding_file(tmp_path / "resumed" / "xltrain.safetensors").vectors, straight.vectors)


@pytest.mark.parametrize("trained,kept", [("clip_l", "clip_g"), ("clip_g", "clip_l")])
def test_train_encoders_trains_one_half_and_keeps_the_other_exactly(xl_model, tmp_path, trained, kept):
    from ti.create import create_embedding
    from ti.train import train_embedding

    create_embedding(xl_model, "xltrain", "red car", 2, tmp_path)
    start = load_embedding_file(tmp_path / "xltrain.safetensors").sdxl_parts()
    result = train_embedding(xl_model, _xl_training(tmp_path, max_steps=3, train_encoders=trained), tmp_path)
    parts = load_embedding_file(tmp_path / "xltrain.safetensors").sdxl_parts()
    assert result.step == 3
    assert not torch.allclose(parts[trained], start[trained])
    assert torch.equal(parts[kept], start[kept])


def test_training_one_half_runs_the_other_encoder_once_per_chunk_and_resumes_exactly(xl_model, tmp_path,
                                                                                       monkeypatch):
    from ti.create import create_embedding
    from ti.train import train_embedding

    template = tmp_path / "one-line.txt"
    template.write_text("a photo of [name]\n")
    for folder in ("straight", "resumed"):
        create_embedding(xl_model, "xltrain", "red car", 2, tmp_path / folder)
    calls = _count_forwards(xl_model.pipe.text_encoder_2, monkeypatch)
    options = dict(train_encoders="clip_l", template=str(template))
    train_embedding(xl_model, _xl_training(tmp_path, max_steps=6, **options), tmp_path / "straight")
    straight = load_embedding_file(tmp_path / "straight" / "xltrain.safetensors")
    assert calls == [1]  # six steps of one prompt: te2 ran once, for its one chunk
    train_embedding(xl_model, _xl_training(tmp_path, max_steps=3, **options), tmp_path / "resumed")
    train_embedding(xl_model, _xl_training(tmp_path, max_steps=6, **options), tmp_path / "resumed")
    assert torch.equal(load_embedding_file(tmp_path / "resumed" / "xltrain.safetensors").vectors, straight.vectors)


def test_train_encoders_is_refused_off_sdxl_and_for_hypernetworks(demo_model_for_sdxl_tests, tmp_path):
    from ti.create import create_embedding
    from ti.errors import ConfigError
    from ti.train import HypernetworkTrainConfig, train_embedding

    create_embedding(demo_model_for_sdxl_tests, "xltrain", "red car", 1, tmp_path)
    with pytest.raises(TrainingError, match="train_encoders 'clip_g' is for SDXL"):
        train_embedding(demo_model_for_sdxl_tests, _xl_training(tmp_path, train_encoders="clip_g"), tmp_path)
    with pytest.raises(ConfigError, match="expected one of both, clip_l, clip_g"):
        _xl_training(tmp_path, train_encoders="clip")
    with pytest.raises(ConfigError, match="hypernetwork acts on the UNet"):
        HypernetworkTrainConfig(**{**vars(_xl_training(tmp_path)), "train_encoders": "clip_l"})


@pytest.mark.parametrize("mode, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_sdxl_trains_in_half_precision_on_a_copy_of_both_encoders(xl_model, tmp_path, mode, dtype):
    """--mixed-precision on an SDXL model loaded in float32: the UNet, VAE and both text encoders
    of the run are cast copies, the vectors stay float32, the loaded model is untouched, and the
    loss agrees with a float32 run's to the precision's rounding."""
    from ti.create import create_embedding
    from ti.train import train_embedding
    from ti.train.speed import model_for_training

    with model_for_training(xl_model, _xl_training(tmp_path, mixed_precision=mode)) as run_model:
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            assert getattr(run_model.pipe, name).dtype == dtype, name
            assert getattr(run_model.pipe, name) is not getattr(xl_model.pipe, name), name
    before = {k: v.clone() for k, v in xl_model.pipe.text_encoder_2.state_dict().items()}
    losses = {}
    for folder, options in (("full", {}), (mode, {"mixed_precision": mode})):
        create_embedding(xl_model, "xltrain", "red car", 2, tmp_path / folder)
        result = train_embedding(xl_model, _xl_training(tmp_path, log_dir=str(tmp_path / f"logs-{folder}"), **options),
                                 tmp_path / folder)
        assert result.stop_reason == "finished", result.message
        losses[folder] = result.loss_history[0][1]
        trained = load_embedding_file(tmp_path / folder / "xltrain.safetensors")
        assert trained.vectors.dtype == torch.float32 and torch.isfinite(trained.vectors).all()
    assert losses[mode] == pytest.approx(losses["full"], rel=0.03)
    assert xl_model.pipe.text_encoder_2.dtype == torch.float32
    assert all(torch.equal(v, before[k]) for k, v in xl_model.pipe.text_encoder_2.state_dict().items())


def test_sdxl_training_stops_on_nan_keeping_the_last_good_vectors(xl_model, tmp_path, monkeypatch):
    from ti.create import create_embedding
    from ti.train import train_embedding

    create_embedding(xl_model, "xltrain", "red car", 2, tmp_path)
    unet = xl_model.pipe.unet
    original, calls = unet.forward, []

    def poisoned_forward(*args, **kwargs):
        calls.append(1)
        output = original(*args, **kwargs)
        if len(calls) >= 3:
            output.sample = output.sample * float("nan")
        return output

    monkeypatch.setattr(unet, "forward", poisoned_forward)
    result = train_embedding(xl_model, _xl_training(tmp_path, max_steps=6, save_every=2), tmp_path)
    assert result.stop_reason == "nan" and result.step == 2, result.message
    saved = load_embedding_file(tmp_path / "xltrain.safetensors")
    copy_at_2 = load_embedding_file(result.log_dir / "embeddings" / "xltrain-2.safetensors")
    assert saved.step == 2 and saved.is_sdxl and torch.isfinite(saved.vectors).all()
    assert torch.equal(saved.vectors, copy_at_2.vectors)


def test_sdxl_gradient_checkpointing_trains_the_same_vectors_and_is_undone(xl_model, tmp_path):
    from ti.create import create_embedding
    from ti.train import train_embedding

    trained = {}
    for folder, checkpointing in (("plain", False), ("checkpointed", True)):
        create_embedding(xl_model, "xltrain", "red car", 2, tmp_path / folder)
        train_embedding(xl_model, _xl_training(tmp_path, gradient_checkpointing=checkpointing,
                                               log_dir=str(tmp_path / f"logs-{folder}")), tmp_path / folder)
        trained[folder] = load_embedding_file(tmp_path / folder / "xltrain.safetensors").vectors
    torch.testing.assert_close(trained["checkpointed"], trained["plain"], rtol=0, atol=1e-6)
    assert not xl_model.pipe.unet.is_gradient_checkpointing


def test_sdxl_training_conditions_each_picture_on_its_own_size_and_crop(xl_model, tmp_path, monkeypatch):
    """SDXL's time ids in training: the file's original size, the crop into its bucket and the
    bucket, per picture (diffusers' and kohya's scripts do the same), not the training size."""
    from PIL import Image

    from ti.create import create_embedding
    from ti.train import train_embedding

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (96, 64), "red").save(data / "wide-a red car.png")  # covers 64x64 at scale 1: 16 px cut left
    create_embedding(xl_model, "xltrain", "red car", 1, tmp_path)
    seen = []
    unet = xl_model.pipe.unet
    original_forward = unet.forward

    def recording_forward(*args, **kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"].tolist())
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", recording_forward)
    train_embedding(xl_model, _xl_training(tmp_path, max_steps=1, flip=True), tmp_path)
    assert seen and all(row == [64.0, 96.0, 0.0, 16.0, 64.0, 64.0] for rows in seen for row in rows)


def test_a_hypernetwork_trains_on_sdxl(xl_model, xl_pipe, tmp_path):
    from ti.hypernetwork import HypernetworkStructure, attention_widths, create_hypernetwork, load_hypernetwork_file
    from ti.train import HypernetworkTrainConfig, train_hypernetwork

    create_hypernetwork("xlhn", tmp_path, attention_widths(xl_pipe.unet), HypernetworkStructure(), seed=2)
    start = load_hypernetwork_file(tmp_path / "xlhn.pt").state_dict()
    config = HypernetworkTrainConfig(**{**_xl_training(tmp_path).to_dict(), "name": "xlhn", "template": "hypernetwork.txt",
                                        "learning_rate": "0.001", "png_embedding": False, "unload_vae": True})
    result = train_hypernetwork(xl_model, config, tmp_path)
    trained = load_hypernetwork_file(tmp_path / "xlhn.pt")
    assert result.stop_reason == "finished" and trained.step == 2
    moved = [key for key, value in trained.state_dict().items() if not torch.equal(value, start[key])]
    assert any(key.startswith("pairs.2048.") for key in moved)  # the text context's pair learned


def test_an_sdxl_diffusers_folder_loads_and_the_refiner_is_refused(xl_pipe, tmp_path):
    folder = tmp_path / "tiny-xl"
    xl_pipe.save_pretrained(folder)
    model = load_model(ModelConfig(model=str(folder), device="cpu"))
    assert model.is_sdxl and model.name == "tiny-xl" and model.family == "sdxl"
    assert txt2img(model, {}, GenerateConfig(prompt="a tree", steps=1, width=64, height=64, seed=1)).images
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    with pytest.raises(ModelLoadError, match="the SDXL refiner, inpainting"):
        load_model(ModelConfig(model=str(folder), device="cpu"))


def test_clip_skip_is_ignored_on_sdxl_with_a_note_as_a1111(xl_model):
    result = txt2img(xl_model, {}, GenerateConfig(prompt="a tree", steps=1, width=64, height=64, seed=1, clip_skip=2))
    assert any("ignored for SDXL" in note for note in result.notes)
    assert "Clip skip: 2" in result.images[0].infotext  # A1111 still writes it


def test_a_hypernetwork_applies_to_sdxl_generation(xl_model, xl_pipe, tmp_path):
    from ti.hypernetwork import HypernetworkLibrary, HypernetworkStructure, attention_widths, create_hypernetwork

    widths = attention_widths(xl_pipe.unet)
    assert 2048 in widths  # the text context: clip_l + clip_g
    create_hypernetwork("xlhn", tmp_path, widths, HypernetworkStructure(weight_init="XavierNormal"), seed=1)
    library = HypernetworkLibrary(tmp_path)
    base = dict(steps=2, width=64, height=64, seed=1)
    with_it = txt2img(xl_model, {}, GenerateConfig(prompt="a tree <hypernet:xlhn:1>", **base), hypernetworks=library)
    without = txt2img(xl_model, {}, GenerateConfig(prompt="a tree", **base), hypernetworks=library)
    assert with_it.notes == [] and with_it.hypernetworks == [("xlhn", 1.0)]
    assert with_it.images[0].image.tobytes() != without.images[0].image.tobytes()
