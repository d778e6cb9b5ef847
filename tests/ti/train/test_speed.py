"""Speed and memory options (ti/train/speed.py): precision, gradient checkpointing, channels_last,
compile. They change how fast a run goes and in how much memory, never what the loaded model is,
and (exactly, or within the precision's rounding) not what is trained."""

from __future__ import annotations

import json

import pytest
import torch

from ti.formats import load_embedding_file
from ti.pipeline import demo_sha256
from ti.train import train_embedding
from ti.train.checkpoint import optimizer_path
from ti.train.speed import cast_copy, model_for_training


def _train(demo_model, kit, tmp_path, folder_name: str, dataset_dir, **options):
    folder = tmp_path / folder_name
    folder.mkdir()
    kit.make_embedding(folder)
    config = kit.config(dataset_dir, max_steps=2, log_dir=str(tmp_path / f"{folder_name}-logs"), **options)
    result = train_embedding(demo_model, config, folder)
    assert result.stop_reason == "finished", result.message
    return result, load_embedding_file(folder / f"{kit.name}.pt")


def test_cast_copy_has_the_new_dtype_and_leaves_the_original_alone(demo_model):
    text_encoder = demo_model.pipe.text_encoder
    before = {name: tensor.clone() for name, tensor in text_encoder.state_dict().items()}
    copy = cast_copy(text_encoder, torch.bfloat16)
    assert all(parameter.dtype == torch.bfloat16 for parameter in copy.parameters())
    assert all(not parameter.requires_grad for parameter in copy.parameters())
    assert all(parameter.dtype == torch.float32 for parameter in text_encoder.parameters())
    assert not any(a is b for a, b in zip(copy.parameters(), text_encoder.parameters()))
    for name, tensor in text_encoder.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    ids = torch.tensor([[0, 5, 9, 1]])
    with torch.no_grad():
        reference, cast = text_encoder(ids)[0], copy(ids)[0].float()
    assert torch.allclose(reference, cast, atol=0.05 * float(reference.abs().max()))


@pytest.mark.parametrize("mode, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_trains_on_a_copy_with_float32_vectors(demo_model, kit, tmp_path, dataset_dir, mode, dtype):
    model_hash = demo_sha256(demo_model.pipe)
    _, reference = _train(demo_model, kit, tmp_path, "fp32", dataset_dir)
    result, trained = _train(demo_model, kit, tmp_path, mode, dataset_dir, mixed_precision=mode)

    assert demo_sha256(demo_model.pipe) == model_hash  # the loaded model: same weights, same dtype
    assert demo_model.pipe.unet.dtype == torch.float32
    assert trained.vectors.dtype == torch.float32
    [settings] = result.log_dir.glob("settings-*.json")
    assert json.loads(settings.read_text())["weights_dtype"] == str(dtype).removeprefix("torch.")
    # The same samples, in half precision: the loss agrees to the precision's rounding, and the
    # vectors moved the same way (AdamW's early steps are about ±lr per element).
    assert result.loss_history[0][1] == pytest.approx(_first_loss(tmp_path / "fp32-logs"), rel=0.02)
    moved_reference = reference.vectors - _start_vectors(kit, tmp_path)
    moved = trained.vectors - _start_vectors(kit, tmp_path)
    agreeing = (torch.sign(moved) == torch.sign(moved_reference)).float().mean()
    assert agreeing > 0.7, agreeing
    saved_state = torch.load(optimizer_path(tmp_path / mode / f"{kit.name}.pt"), weights_only=True)
    if mode == "fp16":  # loss scaling: the scaler's state is kept for a resume
        assert saved_state["ti_state"]["grad_scaler"]["scale"] > 1
    else:
        assert saved_state["ti_state"]["grad_scaler"] is None


def _first_loss(log_root) -> float:
    [csv_path] = log_root.glob("*/*/textual_inversion_loss.csv")
    return float(csv_path.read_text().splitlines()[1].split(",")[3])


def _start_vectors(kit, tmp_path) -> torch.Tensor:
    folder = tmp_path / "start"
    if not (folder / f"{kit.name}.pt").exists():
        folder.mkdir(exist_ok=True)
        kit.make_embedding(folder)
    return load_embedding_file(folder / f"{kit.name}.pt").vectors


def test_checkpointing_and_channels_last_train_the_same_vectors_and_are_undone(demo_model, kit, tmp_path,
                                                                                 dataset_dir):
    _, reference = _train(demo_model, kit, tmp_path, "plain", dataset_dir)
    _, checkpointed = _train(demo_model, kit, tmp_path, "checkpointed", dataset_dir, gradient_checkpointing=True)
    _, channels_last = _train(demo_model, kit, tmp_path, "channels-last", dataset_dir, channels_last=True)
    assert torch.allclose(checkpointed.vectors, reference.vectors, atol=1e-6, rtol=0)
    assert torch.allclose(channels_last.vectors, reference.vectors, atol=1e-5, rtol=0)
    unet = demo_model.pipe.unet
    assert not unet.is_gradient_checkpointing
    assert all(parameter.is_contiguous() for parameter in unet.parameters())


def test_options_are_really_set_on_the_unet_the_run_uses(demo_model, kit, tmp_path, dataset_dir):
    config = kit.config(dataset_dir, gradient_checkpointing=True, channels_last=True)
    with model_for_training(demo_model, config) as run_model:
        assert run_model is demo_model  # same precision: nothing copied
        assert run_model.pipe.unet.is_gradient_checkpointing
        assert run_model.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not demo_model.pipe.unet.is_gradient_checkpointing
    assert demo_model.pipe.unet.conv_in.weight.is_contiguous()


def test_compile_trains_through_a_compiled_copy_of_the_unet(demo_model, kit, tmp_path, dataset_dir, monkeypatch):
    # Inductor takes minutes on this CPU; dynamo with the eager backend goes through the same
    # wiring (a compiled forward on a shallow copy of the UNet) in seconds, with exact results.
    compiled_modules = []
    original_compile = torch.nn.Module.compile

    def compile_eagerly(module, *args, **kwargs):
        compiled_modules.append(module)
        return original_compile(module, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    _, reference = _train(demo_model, kit, tmp_path, "plain", dataset_dir)
    _, compiled = _train(demo_model, kit, tmp_path, "compiled", dataset_dir, compile_unet=True)
    [compiled_unet] = compiled_modules
    assert compiled_unet is not demo_model.pipe.unet and compiled_unet.conv_in is demo_model.pipe.unet.conv_in
    assert demo_model.pipe.unet._compiled_call_impl is None  # the shared UNet's forward stays eager
    assert torch.allclose(compiled.vectors, reference.vectors, atol=1e-6, rtol=0)


def test_the_cli_loads_the_model_in_the_mixed_precision_instead_of_copying_it(tmp_path, dataset_dir, embeddings_dir,
                                                                              kit, monkeypatch):
    from ti.cli import main
    from ti.train import speed

    copies = []
    monkeypatch.setattr(speed, "_cast_model", lambda *args: copies.append(args) or pytest.fail("copied"))
    code = main(["train-embedding", kit.name, "--data", str(dataset_dir), "--model", "demo", "--embeddings-dir",
                 str(embeddings_dir), "--steps", "1", "--width", "64", "--height", "64", "--save-every", "0",
                 "--preview-every", "0", "--log-dir", str(tmp_path / "logs"), "--templates-dir",
                 str(kit.templates_dir), "--mixed-precision", "bf16", "--gradient-checkpointing", "--channels-last"])
    assert code == 0 and not copies
    [settings] = (tmp_path / "logs").glob("*/*/settings-*.json")
    recorded = json.loads(settings.read_text())
    assert (recorded["weights_dtype"], recorded["mixed_precision"], recorded["gradient_checkpointing"],
            recorded["channels_last"]) == ("bfloat16", "bf16", True, True)
