"""Hypernetwork training on the tiny model: the same loop as embeddings, with A1111's files.

Learning, copies in the hypernetworks folder, the .optim and its hash, exact resume with dropout,
the NaN roll-back, the UNet left as it was, and the CLI in a subprocess.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from ti.cli import main
from ti.conditioning import PromptEncoder
from ti.errors import TrainingError
from ti.formats import load_torch_file, write_file_atomically
from ti.formats.a1111_pt import torch_bytes_a1111_accepts
from ti.hypernetwork import HypernetworkStructure, apply_hypernetworks, create_hypernetwork, load_hypernetwork_file
from ti.infotext import parse_infotext
from ti.templates import read_template
from ti.train import HypernetworkTrainConfig, train_hypernetwork
from ti.train.batches import BatchLayout, TrainingBatches
from ti.train.dataset import iter_prepared_images
from ti.train.latents import encode_images
from ti.train.logdir import read_loss_csv
from ti.train.loop import _noise_scheduler, denoising_loss

NAME = "hn"
A1111_KEYS = {"step", "name", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization",
              "sd_checkpoint", "sd_checkpoint_name", "activate_output", "use_dropout", "dropout_structure",
              "last_layer_dropout", "optional_info"}


def make_hypernetwork(folder, dropout=False, sizes=(32, 64)):
    """A fresh hypernetwork for the demo UNet (attention widths 32 and 64), fixed weights."""
    structure = HypernetworkStructure(use_dropout=dropout, dropout_structure=(0, 0.3, 0) if dropout else None)
    return create_hypernetwork(NAME, folder, sizes, structure, seed=7)


@pytest.fixture
def hn_dir(tmp_path):
    folder = tmp_path / "hypernetworks"
    make_hypernetwork(folder)
    return folder


@pytest.fixture
def hn_config(tmp_path, kit):
    def config(data_dir, **overrides):
        values = dict(name=NAME, data_dir=data_dir, width=64, height=64, max_steps=4, save_every=0, preview_every=0,
                      log_dir=str(tmp_path / "logs"), templates_dir=str(kit.templates_dir), preview_steps=1,
                      learning_rate="0.001")
        values.update(overrides)
        return HypernetworkTrainConfig(**values)

    return config


def _weights(path):
    return load_hypernetwork_file(path).state_dict()


def _same_weights(first, second, atol=0.0):
    return first.keys() == second.keys() and all(torch.allclose(first[k], second[k], atol=atol, rtol=0) for k in first)


def test_defaults_are_a1111s_hypernetwork_ones(dataset_dir, kit):
    config = HypernetworkTrainConfig(name=NAME, data_dir=dataset_dir, templates_dir=str(kit.templates_dir))
    assert (config.learning_rate, config.template, config.png_embedding) == ("0.00001", "hypernetwork.txt", False)
    assert "text encoder" in HypernetworkTrainConfig.help_for("unload_vae")


def test_training_saves_a1111_copies_and_final_file_and_restores_the_unet(demo_model, dataset_dir, hn_dir, hn_config):
    unet = demo_model.pipe.unet
    processors = dict(unet.attn_processors)
    start = _weights(hn_dir / "hn.pt")
    config = hn_config(dataset_dir, max_steps=4, save_every=2, preview_every=4, unload_vae=True)
    result = train_hypernetwork(demo_model, config, hn_dir)

    assert (result.stop_reason, result.step, result.notes) == ("finished", 4, [])
    assert all(unet.attn_processors[name] is processor for name, processor in processors.items())
    assert next(demo_model.pipe.text_encoder.parameters()).device == demo_model.device
    assert sorted(p.name for p in hn_dir.iterdir()) == ["hn-2.pt", "hn-2.pt.optim", "hn-4.pt", "hn-4.pt.optim",
                                                         "hn.pt", "hn.pt.optim"]
    final = load_hypernetwork_file(hn_dir / "hn.pt")
    assert (final.step, final.stored_name, final.checkpoint_hash, final.checkpoint_name) == (
        4, "hn", demo_model.short_hash, "demo")
    assert not _same_weights(final.state_dict(), start)
    assert _same_weights(final.state_dict(), _weights(hn_dir / "hn-4.pt"))
    copy = load_hypernetwork_file(hn_dir / "hn-2.pt")
    assert (copy.step, copy.stored_name) == (2, "hn-2")
    raw = torch.load(hn_dir / "hn-2.pt", map_location="cpu", weights_only=True)
    assert [key for key in raw if isinstance(key, int)] == [32, 64] and A1111_KEYS <= set(raw)
    assert list(raw[32][0]) == ["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"]

    for path in (hn_dir / "hn.pt", hn_dir / "hn-2.pt"):  # A1111's .optim: name, hash of the .pt, state
        optim = load_torch_file(path.with_name(path.name + ".optim"))
        assert optim["optimizer_name"] == "AdamW"
        assert optim["hash"] == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        assert optim["optimizer_state_dict"]["param_groups"][0]["weight_decay"] == 0.01

    root = result.log_dir
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["images"]  # no embeddings/, image_embeddings/
    prompt, _, params = parse_infotext(Image.open(root / "images" / "hn-4.png").text["parameters"])
    assert "<hypernet:hn:1>" in prompt and params["Steps"] == "1"
    rows = read_loss_csv(root / "hypernetwork_loss.csv")
    assert [row["step"] for row in rows] == ["1", "2", "3", "4"] and rows[0]["learn_rate"] == "0.001"
    settings = json.loads(next(root.glob("settings-*.json")).read_text(encoding="utf-8"))
    assert settings["hypernetwork_sizes"] == [32, 64] and settings["unload_moves"] == ["vae", "text_encoder"]
    assert HypernetworkTrainConfig.from_dict(settings, ignore_unknown=True) == config


def test_one_step_lowers_the_loss_of_its_own_batch(demo_model, dataset_dir, hn_dir, hn_config):
    config = hn_config(dataset_dir, max_steps=1)
    before = load_hypernetwork_file(hn_dir / "hn.pt")
    train_hypernetwork(demo_model, config, hn_dir)
    after = load_hypernetwork_file(hn_dir / "hn.pt")
    pipe = demo_model.pipe
    samples, _ = encode_images(pipe.vae, iter_prepared_images(dataset_dir, 64, 64, False, False), "once", False,
                               config.seed, torch.device("cpu"))
    batches = TrainingBatches(samples, BatchLayout.for_dataset(len(samples), 1, 1),
                              read_template(config.template_path()), NAME, config.seed, False, 0.0, 1000)
    batch = batches.micro_batch(0, 0)
    with torch.no_grad():
        conditioning = PromptEncoder(pipe.tokenizer, pipe.text_encoder, {}).encode(batch.prompts)[0]

    def loss_with(hypernetwork):
        with torch.no_grad(), apply_hypernetworks(pipe.unet, [(hypernetwork, 1.0)]):
            return float(denoising_loss(pipe.unet, _noise_scheduler(pipe), conditioning, batch, torch.float32))

    assert after.step == 1 and not _same_weights(before.state_dict(), after.state_dict())
    assert loss_with(after) < loss_with(before)


def test_resume_with_dropout_equals_uninterrupted(demo_model, dataset_dir, tmp_path, hn_config):
    """10 steps straight == 5 steps, a new run, 5 more; dropout masks are seeded by the step too."""
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    for folder in (straight_dir, split_dir):
        make_hypernetwork(folder, dropout=True)
    straight = train_hypernetwork(demo_model, hn_config(dataset_dir, max_steps=10), straight_dir)
    first = train_hypernetwork(demo_model, hn_config(dataset_dir, max_steps=5), split_dir)
    second = train_hypernetwork(demo_model, hn_config(dataset_dir, max_steps=10), split_dir)
    assert (straight.step, first.step, second.start_step, second.step) == (10, 5, 5, 10)
    assert second.notes == []  # the .optim was picked up
    assert _same_weights(_weights(straight_dir / "hn.pt"), _weights(split_dir / "hn.pt"), atol=1e-6)
    straight_state = load_torch_file(straight_dir / "hn.pt.optim")["optimizer_state_dict"]["state"]
    split_state = load_torch_file(split_dir / "hn.pt.optim")["optimizer_state_dict"]["state"]
    assert straight_state.keys() == split_state.keys()
    for index in straight_state:
        assert torch.allclose(straight_state[index]["exp_avg_sq"], split_state[index]["exp_avg_sq"], atol=1e-9, rtol=1e-5)
    assert [loss for _, loss in straight.loss_history[5:]] == pytest.approx([loss for _, loss in second.loss_history])


def test_optim_saved_for_another_file_is_ignored_with_a_note(demo_model, dataset_dir, hn_dir, hn_config):
    train_hypernetwork(demo_model, hn_config(dataset_dir, max_steps=1), hn_dir)
    side_file = hn_dir / "hn.pt.optim"
    saved = load_torch_file(side_file)
    assert saved["hash"] == hashlib.sha256((hn_dir / "hn.pt").read_bytes()).hexdigest()[:10]
    write_file_atomically(side_file, torch_bytes_a1111_accepts({**saved, "hash": "0123456789"}))
    result = train_hypernetwork(demo_model, hn_config(dataset_dir, max_steps=2), hn_dir)
    assert result.step == 2 and len(result.notes) == 1
    assert "saved for another file (hash 0123456789" in result.notes[0] and "starts fresh" in result.notes[0]
    fresh_state = load_torch_file(side_file)["optimizer_state_dict"]["state"]
    assert all(float(state["step"]) == 1 for state in fresh_state.values())  # one step since the fresh start


def test_nan_rolls_back_to_the_last_good_copy(demo_model, dataset_dir, hn_dir, hn_config, monkeypatch):
    unet = demo_model.pipe.unet
    original, calls = unet.forward, []

    def forward(*args, **kwargs):  # NaN from the 4th UNet call (step 4) on
        calls.append(1)
        output = original(*args, **kwargs)
        if len(calls) >= 4:
            output.sample = output.sample * float("nan")
        return output

    monkeypatch.setattr(unet, "forward", forward)
    result = train_hypernetwork(demo_model, hn_config(dataset_dir, max_steps=10, save_every=2), hn_dir)
    assert result.stop_reason == "nan" and result.step == 2 and len(result.loss_history) == 3
    assert "loss became nan at step 4" in result.message
    assert "rolled back to the last good copy, hn-2.pt at step 2" in result.message
    final = load_hypernetwork_file(hn_dir / "hn.pt")
    assert final.step == 2 and all(torch.isfinite(t).all() for t in final.state_dict().values())
    assert _same_weights(final.state_dict(), _weights(hn_dir / "hn-2.pt"))  # not step 3's weights
    final_state = load_torch_file(hn_dir / "hn.pt.optim")["optimizer_state_dict"]["state"]
    copy_state = load_torch_file(hn_dir / "hn-2.pt.optim")["optimizer_state_dict"]["state"]
    assert all(torch.equal(final_state[i]["exp_avg"], copy_state[i]["exp_avg"]) for i in copy_state)


def test_missing_or_misfit_hypernetworks_are_refused(demo_model, dataset_dir, tmp_path, hn_config):
    with pytest.raises(TrainingError, match="no such hypernetwork; create it first: python -m ti create-hypernetwork"):
        train_hypernetwork(demo_model, hn_config(dataset_dir), tmp_path)
    make_hypernetwork(tmp_path, sizes=(768, 320))
    with pytest.raises(TrainingError, match="modules are for widths 768, 320, but this model's attention layers "
                                            "take 32, 64.*--sizes 32,64"):
        train_hypernetwork(demo_model, hn_config(dataset_dir), tmp_path)


def test_cli_trains_a_hypernetwork_two_steps(tmp_path, dataset_dir, kit):
    make_hypernetwork(tmp_path / "hns")
    command = [sys.executable, "-m", "ti", "train-hypernetwork", NAME, "--data", str(dataset_dir), "--model", "demo",
               "--hypernetwork-dir", "hns", "--steps", "2", "--width", "64", "--height", "64", "--save-every", "2",
               "--preview-every", "0", "--log-dir", "logs", "--templates-dir", str(kit.templates_dir)]
    environment = {**os.environ, "PYTHONPATH": str(kit.templates_dir.parent), "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "finished: hn trained to step 2" in finished.stdout
    assert load_hypernetwork_file(tmp_path / "hns" / "hn.pt").step == 2
    assert load_hypernetwork_file(tmp_path / "hns" / "hn-2.pt").stored_name == "hn-2"
    settings = json.loads(next((tmp_path / "logs").glob("*/hn/settings-*.json")).read_text(encoding="utf-8"))
    assert settings["learning_rate"] == "0.00001" and settings["template"] == "hypernetwork.txt"


def test_cli_train_hypernetwork_refusals_are_one_line(capsys, dataset_dir, tmp_path, kit):
    code = main(["train-hypernetwork", "nohn", "--data", str(dataset_dir), "--hypernetwork-dir", str(tmp_path),
                 "--templates-dir", str(kit.templates_dir)])
    error = capsys.readouterr().err
    assert code == 2 and "python -m ti create-hypernetwork nohn" in error and len(error.strip().splitlines()) == 1
    code = main(["train-hypernetwork", NAME, "--data", str(dataset_dir), "--hypernetwork-dir", str(tmp_path),
                 "--templates-dir", str(kit.templates_dir), "--lr", "1e-5:x"])
    assert code == 2 and "learning_rate: " in capsys.readouterr().err


@pytest.mark.parametrize("unload", [False, True])
def test_the_frozen_text_encoder_runs_once_per_distinct_chunk(demo_model, dataset_dir, hn_dir, hn_config, tmp_path,
                                                               monkeypatch, unload):
    template = tmp_path / "one-line.txt"
    template.write_text("a picture in the style of [name]\n")
    text_encoder = demo_model.pipe.text_encoder
    original, calls = text_encoder.forward, []

    def counting_forward(input_ids, *args, **kwargs):
        calls.append(tuple(input_ids.shape))
        return original(input_ids, *args, **kwargs)

    monkeypatch.setattr(text_encoder, "forward", counting_forward)
    result = train_hypernetwork(demo_model, hn_config(dataset_dir, max_steps=5, template=str(template),
                                                      unload_vae=unload), hn_dir)
    assert result.stop_reason == "finished" and result.step == 5
    assert calls == [(1, 77)]  # five steps of one prompt: one chunk, encoded once
