"""`python -m ti create-hypernetwork`: a real subprocess writes an A1111-keyed file; flag errors exit 2."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ti.cli import main
from ti.formats.a1111_pt import A1111_ZIP_MEMBER

REPO = Path(__file__).resolve().parents[3]


def test_create_hypernetwork_subprocess_writes_an_a1111_file(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "ti", "create-hypernetwork", "anime style", "--sizes", "32,64", "--layers", "1, 2, 1",
         "--activation", "swish", "--init", "KaimingNormal", "--layer-norm", "--dropout", "--dropout-structure", "0,0.3,0",
         "--hypernetwork-dir", "hns", "--seed", "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "hns" / "anime style.pt"
    assert f"created {Path('hns') / 'anime style.pt'}" in result.stdout
    assert all(A1111_ZIP_MEMBER.match(member) for member in zipfile.ZipFile(path).namelist())
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert [key for key in data if isinstance(key, int)] == [32, 64]
    assert list(data[32][0]) == ["linear.0.weight", "linear.0.bias", "linear.2.weight", "linear.2.bias",
                                 "linear.4.weight", "linear.4.bias", "linear.5.weight", "linear.5.bias"]
    assert (data["name"], data["activation_func"], data["weight_initialization"]) == ("anime style", "swish", "KaimingNormal")
    assert data["is_layer_norm"] and data["use_dropout"] and data["dropout_structure"] == [0.0, 0.3, 0.0]
    assert data["activate_output"] is False and data["step"] == 0


@pytest.mark.parametrize("flags, message", [
    (["--dropout-structure", "0,0.3,0"], "--dropout-structure: is used only with --dropout"),
    (["--dropout", "--dropout-structure", "0.1,0.3,0"], "must start and end with 0"),
    (["--layers", "1,2"], "layer structure: must start and end with 1"),
    (["--sizes", "768,abc"], "sizes: 'abc' in '768,abc' is not a number"),
    (["--activation", "wobble"], "unknown activation 'wobble'"),
])
def test_create_hypernetwork_flag_errors_exit_2_with_one_line(flags, message, tmp_path, capsys):
    status = main(["create-hypernetwork", "x", "--hypernetwork-dir", str(tmp_path), *flags])
    error = capsys.readouterr().err
    assert status == 2 and message in error and error.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_create_hypernetwork_refuses_to_overwrite(tmp_path, capsys):
    assert main(["create-hypernetwork", "x", "--hypernetwork-dir", str(tmp_path), "--sizes", "8"]) == 0
    assert main(["create-hypernetwork", "x", "--hypernetwork-dir", str(tmp_path), "--sizes", "8"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["create-hypernetwork", "x", "--hypernetwork-dir", str(tmp_path), "--sizes", "16", "--overwrite"]) == 0
    assert [key for key in torch.load(tmp_path / "x.pt", weights_only=True) if isinstance(key, int)] == [16]


def test_with_a_model_the_default_sizes_are_its_attention_widths_and_a_seed_repeats_the_weights(tmp_path):
    from ti.demo import build_demo_pipeline
    from ti.hypernetwork import attention_widths, load_hypernetwork_file

    for folder in ("a", "b"):
        assert main(["create-hypernetwork", "hn", "--model", "demo", "--seed", "5", "--device", "cpu",
                     "--hypernetwork-dir", str(tmp_path / folder)]) == 0
    first, second = (load_hypernetwork_file(tmp_path / folder / "hn.pt") for folder in ("a", "b"))
    assert sorted(first.sizes) == sorted(attention_widths(build_demo_pipeline().unet))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert main(["create-hypernetwork", "plain", "--hypernetwork-dir", str(tmp_path / "c")]) == 0
    assert sorted(load_hypernetwork_file(tmp_path / "c" / "plain.pt").sizes) == [320, 640, 768, 1280]
