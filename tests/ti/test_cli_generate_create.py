"""`python -m ti generate` and `python -m ti create` as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def run_ti(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "ti", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_create_then_generate_with_it(tmp_path):
    created = run_ti("create", "my-thing", "--init-text", "tree", "--vectors", "2", "--model", "demo", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "embeddings" / "my-thing.pt").is_file()
    again = run_ti("create", "my-thing", "--model", "demo", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr

    out = tmp_path / "pic.png"
    result = run_ti("generate", "a my-thing by monet", "--model", "demo", "--size", "64x64", "--steps", "2",
                    "--seed", "5", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "used embeddings: my-thing" in result.stdout
    with Image.open(out) as image:
        text = image.text["parameters"]
        assert image.size == (64, 64)
    assert text.startswith("a my-thing by monet\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64")
    assert 'TI hashes: "my-thing: ' in text


def test_generate_bad_size_is_one_line_exit_2(tmp_path):
    result = run_ti("generate", "x", "--model", "demo", "--size", "64by64", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: size: expected WxH such as 512x512, got '64by64'"


def test_generate_without_a_model_says_it_uses_the_demo_model(tmp_path):
    result = run_ti("generate", "a tree", "--size", "64x64", "--steps", "1", "--out", str(tmp_path / "p.png"),
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "generating with the demo model" in result.stderr


def test_generate_takes_its_parameters_from_an_infotext_and_flags_override_it(tmp_path, capsys):
    from PIL import Image

    from ti.cli import main
    from ti.generate import save_png_with_infotext
    from ti.infotext import parse_infotext

    source = save_png_with_infotext(Image.new("RGB", (8, 8)), (
        "a [red:blue:0.5] tree\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 6.5, Seed: 77, Size: 64x64, Model: anything-v5, Clip skip: 2"), tmp_path / "a1111.png")
    out = tmp_path / "again.png"
    assert main(["generate", "--infotext", str(source), "--steps", "2", "--model", "demo", "--out", str(out),
                 "--embeddings-dir", str(tmp_path)]) == 0
    assert "not applied: Model: anything-v5" in capsys.readouterr().err
    with Image.open(out) as picture:
        prompt, negative, params = parse_infotext(picture.info["parameters"])
    assert (prompt, negative) == ("a [red:blue:0.5] tree", "blurry")
    assert {key: params[key] for key in ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size",
                                         "Clip skip")} == {
        "Steps": "2", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "6.5", "Seed": "77",
        "Size": "64x64", "Clip skip": "2"}
    assert main(["generate", "--model", "demo", "--out", str(out)]) == 2  # no prompt, no infotext
