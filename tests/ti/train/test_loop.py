"""The training loop on the tiny model: learning, exact resume, interrupt, NaN, log folder."""

import json
import math
import time

import pytest
import torch
from PIL import Image

from ti.conditioning import PromptEncoder
from ti.errors import TrainingError
from ti.formats import load_embedding_file, load_torch_file
from ti.infotext import parse_infotext
from ti.train import TrainConfig, TrainHooks, train_embedding
from ti.train.batches import BatchLayout, MicroBatch, TrainingBatches
from ti.train.dataset import iter_prepared_images
from ti.train.latents import encode_images
from ti.train.logdir import read_loss_csv
from ti.templates import read_template
from ti.train.loop import _noise_scheduler, denoising_loss


def _vectors(embeddings_dir, name="mytok"):
    return load_embedding_file(embeddings_dir / f"{name}.pt").vectors


def _fixed_eval_loss(pipe, data_dir, vectors, prompt="a photo of mytok"):
    """The loss over a fixed set of (image, timestep, noise): the same numbers for any vectors."""
    samples, _ = encode_images(pipe.vae, iter_prepared_images(data_dir, 64, 64, False, False), "deterministic",
                               False, 0, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    latents = torch.stack([s.latent for s in samples]).repeat(8, 1, 1, 1)
    batch = MicroBatch([], latents, torch.randn(latents.shape, generator=generator),
                       torch.randint(0, 1000, (latents.shape[0],), generator=generator), None)
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, {"mytok": vectors})
    with torch.no_grad():
        conditioning, _ = encoder.encode([prompt] * latents.shape[0])
        return float(denoising_loss(pipe.unet, _noise_scheduler(pipe), conditioning, batch, torch.float32))


def test_one_step_lowers_the_loss_of_its_own_batch(demo_model, dataset_dir, embeddings_dir, kit):
    config = kit.config(dataset_dir, max_steps=1, learning_rate="0.001")
    before = _vectors(embeddings_dir)
    train_embedding(demo_model, config, embeddings_dir)
    after = _vectors(embeddings_dir)
    pipe = demo_model.pipe
    # Rebuild step 0's micro-batch exactly as the run did (same seed, same cache method).
    samples, _ = encode_images(pipe.vae, iter_prepared_images(dataset_dir, 64, 64, False, False), "once", False,
                               config.seed, torch.device("cpu"))
    batches = TrainingBatches(samples, BatchLayout.for_dataset(len(samples), 1, 1),
                              read_template(config.template_path()), "mytok", config.seed, False, 0.0, 1000)
    batch = batches.micro_batch(0, 0)

    def loss_with(vectors):
        encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder, {"mytok": vectors})
        with torch.no_grad():
            conditioning = encoder.encode(batch.prompts)[0]
            return float(denoising_loss(pipe.unet, _noise_scheduler(pipe), conditioning, batch, torch.float32))

    assert not torch.equal(before, after)
    assert loss_with(after) < loss_with(before)


def test_training_lowers_a_fixed_evaluation_loss(demo_model, dataset_dir, embeddings_dir, kit, tmp_path):
    template = tmp_path / "plain.txt"
    template.write_text("a photo of [name]\n", encoding="utf-8")
    config = kit.config(dataset_dir, max_steps=8, learning_rate="0.1", template=str(template))
    before = _vectors(embeddings_dir)
    result = train_embedding(demo_model, config, embeddings_dir)
    after = _vectors(embeddings_dir)
    assert result.stop_reason == "finished" and result.step == 8
    assert _fixed_eval_loss(demo_model.pipe, dataset_dir, after) < _fixed_eval_loss(demo_model.pipe, dataset_dir, before) - 1e-3


def _mixed_dataset(kit, folder):
    """Three square and two wide pictures: two buckets at a 128×64 target."""
    kit.write_images(folder, 3, size=(64, 64), seed=1)
    kit.write_images(folder, 2, size=(128, 64), seed=2, names=["wide-1.png", "wide-2.png"])
    (folder / "wide-1.txt").write_text("a wide thing, red, blue, green", encoding="utf-8")
    return folder


def _straight_and_split(model, kit, tmp_path, data, total_steps, split_at, **options):
    """Train total_steps in one run, and split_at + the rest in two runs; returns both folders and results."""
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    for folder in (straight_dir, split_dir):
        folder.mkdir()
        kit.make_embedding(folder)
    straight = train_embedding(model, kit.config(data, max_steps=total_steps, **options), straight_dir)
    first = train_embedding(model, kit.config(data, max_steps=split_at, **options), split_dir)
    second = train_embedding(model, kit.config(data, max_steps=total_steps, **options), split_dir)
    assert (straight.step, first.step, second.step, second.start_step) == (total_steps, split_at, total_steps, split_at)
    assert not second.notes  # the optimizer state was picked up
    return straight_dir, split_dir, straight, second


def test_resume_equals_uninterrupted(demo_model, kit, tmp_path):
    """10 steps straight == 5 steps, a new run, 5 more: every random draw is keyed by the step."""
    data = _mixed_dataset(kit, tmp_path / "data")
    straight_dir, split_dir, straight, second = _straight_and_split(
        demo_model, kit, tmp_path, data, 10, 5, width=128, height=64, batch_size=2, grad_accum=2, flip=True,
        latent_sampling="random", shuffle_tags=True, tag_dropout=0.3, learning_rate="0.02:7, 0.01",
        clip_grad="norm", clip_value="0.5")
    assert torch.allclose(_vectors(straight_dir), _vectors(split_dir), atol=1e-6, rtol=0)
    straight_optim = load_torch_file(straight_dir / "mytok.pt.optim")["optimizer_state_dict"]["state"][0]
    split_optim = load_torch_file(split_dir / "mytok.pt.optim")["optimizer_state_dict"]["state"][0]
    assert torch.allclose(straight_optim["exp_avg_sq"], split_optim["exp_avg_sq"], atol=1e-9, rtol=1e-5)
    assert [loss for _, loss in straight.loss_history[5:]] == pytest.approx([loss for _, loss in second.loss_history])


@pytest.fixture(scope="module")
def fp16_model():
    """A half-precision copy of the demo model: the GradScaler path CUDA users take, on the CPU."""
    from ti.demo import build_demo_pipeline
    from ti.pipeline import LoadedModel

    pipe = build_demo_pipeline()
    pipe.to(dtype=torch.float16)
    return LoadedModel(pipe=pipe, name="demo-fp16", source="demo", sha256="0" * 64, device=torch.device("cpu"),
                       dtype=torch.float16)


def test_fp16_trains_with_loss_scaling_and_resumes_exactly(fp16_model, kit, tmp_path, dataset_dir):
    straight_dir, split_dir, straight, _ = _straight_and_split(fp16_model, kit, tmp_path, dataset_dir, 4, 2)
    assert all(math.isfinite(loss) for _, loss in straight.loss_history)
    scaler_state = load_torch_file(split_dir / "mytok.pt.optim")["ti_state"]["grad_scaler"]
    assert scaler_state["scale"] > 1 and scaler_state["_growth_tracker"] == 4
    assert _vectors(straight_dir).dtype == torch.float32
    assert torch.allclose(_vectors(straight_dir), _vectors(split_dir), atol=1e-6, rtol=0)


def test_interrupt_saves_at_the_step_boundary_and_resumes(demo_model, dataset_dir, embeddings_dir, kit):
    progress = []
    hooks = TrainHooks(on_progress=progress.append, should_stop=lambda: len(progress) >= 2)
    result = train_embedding(demo_model, kit.config(dataset_dir, max_steps=10), embeddings_dir, hooks)
    assert result.stop_reason == "interrupted" and result.step == 2
    assert "continue from step 2" in result.message
    assert load_embedding_file(embeddings_dir / "mytok.pt").step == 2
    assert (embeddings_dir / "mytok.pt.optim").is_file()
    assert [p.step for p in progress] == [1, 2] and progress[-1].max_steps == 10
    assert progress[-1].learning_rate == 0.005 and progress[-1].loss == result.loss_history[-1][1]
    assert (progress[-1].epoch, progress[-1].epoch_step) == (0, 2) and progress[-1].seconds_per_step > 0
    resumed = train_embedding(demo_model, kit.config(dataset_dir, max_steps=3), embeddings_dir)
    assert (resumed.start_step, resumed.step, resumed.stop_reason) == (2, 3, "finished")
    assert [step for step, _ in resumed.loss_history] == [3]


def test_nothing_to_do_returns_at_once(demo_model, dataset_dir, tmp_path, kit):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    kit.make_embedding(folder, step=5)
    result = train_embedding(demo_model, kit.config(dataset_dir, max_steps=5), folder)
    assert (result.stop_reason, result.step, result.log_dir) == ("finished", 5, None)
    assert "already trained to step 5" in result.message and "nothing to do" in result.message


def _poison_unet(monkeypatch, unet, at_call: int, where: str):
    """Make the UNet's forward give NaN (output or gradient) from call number `at_call` on."""
    original = unet.forward
    calls = []

    def forward(*args, **kwargs):
        calls.append(1)
        output = original(*args, **kwargs)
        if len(calls) >= at_call:
            if where == "output":
                output.sample = output.sample * float("nan")
            else:
                output.sample.register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return output

    monkeypatch.setattr(unet, "forward", forward)


@pytest.mark.parametrize("where", ["output", "gradient"])
def test_nan_stops_and_keeps_the_last_good_vectors(demo_model, dataset_dir, embeddings_dir, kit, monkeypatch, where):
    _poison_unet(monkeypatch, demo_model.pipe.unet, at_call=3, where=where)
    result = train_embedding(demo_model, kit.config(dataset_dir, max_steps=10, save_every=2), embeddings_dir)
    assert result.stop_reason == "nan" and result.step == 2
    assert ("loss became nan at step 3" if where == "output" else "gradient became NaN/inf at step 3") in result.message
    assert "kept the vectors of step 2" in result.message and "lower learning rate" in result.message
    saved = load_embedding_file(embeddings_dir / "mytok.pt")
    copy_at_2 = load_embedding_file(result.log_dir / "embeddings" / "mytok-2.pt")
    assert saved.step == 2 and torch.isfinite(saved.vectors).all()
    assert torch.equal(saved.vectors, copy_at_2.vectors)


def test_log_folder_layout(demo_model, dataset_dir, embeddings_dir, kit):
    config = kit.config(dataset_dir, max_steps=4, save_every=2, preview_every=2, unload_vae=True)
    result = train_embedding(demo_model, config, embeddings_dir)
    root = result.log_dir
    assert root.name == "mytok" and str(root.parent.parent) == config.log_dir
    assert __import__("re").fullmatch(r"\d{4}-\d{2}-\d{2}", root.parent.name)
    assert sorted(p.name for p in (root / "embeddings").iterdir()) == [
        "mytok-2.pt", "mytok-2.pt.optim", "mytok-4.pt", "mytok-4.pt.optim"]
    for step in (2, 4):
        copy = load_embedding_file(root / "embeddings" / f"mytok-{step}.pt")
        assert copy.step == step and copy.checkpoint_hash == demo_model.short_hash and copy.checkpoint_name == "demo"
        preview = Image.open(root / "images" / f"mytok-{step}.png")
        prompt, _, params = parse_infotext(preview.text["parameters"])
        assert "mytok" in prompt and params["Steps"] == "1" and "mytok" in params["TI hashes"]
        assert params["TI hashes"].endswith(copy.shorthash)  # the preview names the saved copy's hash
        image_embedding = load_embedding_file(root / "image_embeddings" / f"mytok-{step}.png")
        assert image_embedding.name == f"mytok-{step}" and image_embedding.step == step
        assert torch.allclose(image_embedding.vectors, copy.vectors, atol=1e-7)
    assert result.last_preview == root / "images" / "mytok-4.png"
    rows = read_loss_csv(root / "textual_inversion_loss.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert list(rows[0]) == ["step", "epoch", "epoch_step", "loss", "learn_rate"]
    assert [(r["epoch"], r["epoch_step"]) for r in rows] == [("0", "1"), ("0", "2"), ("0", "3"), ("0", "4")]
    assert float(rows[-1]["loss"]) == pytest.approx(result.loss_history[-1][1], abs=1e-6)
    assert rows[0]["learn_rate"] == "0.005"
    settings_files = list(root.glob("settings-*.json"))
    assert len(settings_files) == 1
    settings = json.loads(settings_files[0].read_text(encoding="utf-8"))
    assert settings["learning_rate"] == "0.005" and settings["model_hash"] == demo_model.short_hash
    assert settings["dataset_size"] == 4 and settings["buckets"] == {"64x64": 4} and "datetime" in settings
    assert TrainConfig.from_dict(settings, ignore_unknown=True) == config  # a run's settings can be reloaded
    final = load_embedding_file(embeddings_dir / "mytok.pt")
    assert final.step == 4 and final.name == "mytok" and final.checkpoint_hash == demo_model.short_hash
    assert next(demo_model.pipe.vae.parameters()).device == demo_model.device


def test_alpha_weights_with_uniform_and_partial_alpha(demo_model, tmp_path, embeddings_dir, kit):
    data = tmp_path / "alpha"
    kit.write_images(data, 1, mode="RGBA", names=["partial.png"])
    opaque = Image.new("RGBA", (64, 64), (200, 10, 10, 255))
    opaque.save(data / "opaque.png")
    result = train_embedding(demo_model, kit.config(data, max_steps=2, alpha_weight=True, batch_size=2), embeddings_dir)
    assert result.stop_reason == "finished"
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.loss_history)


def test_unreadable_images_are_listed_and_an_all_bad_folder_refused(demo_model, tmp_path, embeddings_dir, kit):
    data = tmp_path / "bad"
    data.mkdir()
    (data / "a.png").write_bytes(b"not a png")
    (data / "b.jpg").write_bytes(b"")
    with pytest.raises(TrainingError, match="no usable training image.*a.png.*b.jpg"):
        train_embedding(demo_model, kit.config(data, max_steps=1), embeddings_dir)
    kit.write_images(data, 1)
    result = train_embedding(demo_model, kit.config(data, max_steps=1), embeddings_dir)
    assert [item.path.name for item in result.skipped_images] == ["a.png", "b.jpg"]


def test_missing_embedding_is_a_clear_error(demo_model, dataset_dir, tmp_path, kit):
    with pytest.raises(TrainingError, match="python -m ti create mytok"):
        train_embedding(demo_model, kit.config(dataset_dir), tmp_path)


def test_template_without_name_is_refused(demo_model, dataset_dir, embeddings_dir, kit):
    with pytest.raises(TrainingError, match=r"no line has \[name\]"):
        train_embedding(demo_model, kit.config(dataset_dir, template="hypernetwork.txt"), embeddings_dir)


def test_a_hypernetwork_applied_by_another_thread_never_reaches_an_embedding_step(demo_model, dataset_dir, kit,
                                                                                  tmp_path):
    """A generation in another tab sets its hypernetwork on the shared UNet, under the UNet's
    lock, for a while; the embedding run's steps wait for it and train exactly as without it."""
    import threading

    from ti.hypernetwork import Hypernetwork, HypernetworkStructure, apply_hypernetworks
    from ti.hypernetwork.apply import attention_widths
    from ti.locks import module_lock

    unet = demo_model.pipe.unet
    structure = HypernetworkStructure(weight_init="XavierNormal")
    hypernetwork = Hypernetwork("strong", sorted(set(attention_widths(unet))), structure,
                                generator=torch.Generator().manual_seed(3))
    applied, threads = threading.Event(), []

    def generation_in_another_tab():
        with module_lock(unet), apply_hypernetworks(unet, [(hypernetwork, 5.0)]):
            applied.set()
            time.sleep(1.0)  # the length of a generation: steps meanwhile must not see it

    def after_step(progress):
        if progress.step == 1:
            threads.append(threading.Thread(target=generation_in_another_tab))
            threads[0].start()
            assert applied.wait(10)  # the next step starts while the hypernetwork is on the UNet

    folders = {}
    for label, hooks in (("alone", TrainHooks()), ("beside a generation", TrainHooks(on_progress=after_step))):
        folders[label] = tmp_path / label.replace(" ", "-")
        folders[label].mkdir()
        kit.make_embedding(folders[label])
        train_embedding(demo_model, kit.config(dataset_dir, max_steps=3), folders[label], hooks)
    threads[0].join()
    assert torch.equal(_vectors(folders["alone"]), _vectors(folders["beside a generation"]))


def test_unload_vae_waits_for_a_generation_that_is_decoding_with_the_shared_vae(demo_model, dataset_dir,
                                                                               embeddings_dir, kit):
    """Training with "unload VAE" moves the shared VAE to the CPU; a generation in another tab
    decoding with it at that moment must finish first (the VAE's lock guards where it lives)."""
    import threading

    from ti.config import GenerateConfig
    from ti.generate import txt2img

    vae = demo_model.pipe.vae
    events, about_to_offload = [], threading.Event()
    original_to, original_decode = vae.to, vae.decode

    def recording_to(*args, **kwargs):
        events.append(("move", threading.current_thread().name))
        return original_to(*args, **kwargs)

    def slow_decode(*args, **kwargs):
        events.append(("decode starts", threading.current_thread().name))
        assert about_to_offload.wait(30)
        time.sleep(0.3)  # the training thread's move would land here without the lock
        events.append(("decode ends", threading.current_thread().name))
        return original_decode(*args, **kwargs)

    def training_status(text):
        if text.startswith("training "):
            about_to_offload.set()

    vae.to, vae.decode = recording_to, slow_decode
    try:
        pictures = []
        generation = threading.Thread(name="generation", target=lambda: pictures.extend(txt2img(
            demo_model, {}, GenerateConfig(prompt="a tree", steps=2, width=64, height=64, seed=1)).images))
        generation.start()
        while not events:
            time.sleep(0.01)
        training = threading.Thread(name="training", target=train_embedding, args=(
            demo_model, kit.config(dataset_dir, max_steps=1, unload_vae=True), embeddings_dir,
            TrainHooks(on_status=training_status)))
        training.start()
        generation.join(60)
        training.join(60)
    finally:
        del vae.to, vae.decode
    assert [kind for kind, _ in events[:2]] == ["decode starts", "decode ends"], events
    assert ("move", "training") in events and len(pictures) == 1
    assert load_embedding_file(embeddings_dir / "mytok.pt").step == 1
