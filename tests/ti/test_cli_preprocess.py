"""`python -m ti preprocess`: flags reach the options, exit codes, messages, progress, Ctrl-C."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ti.cli import main
from ti.cli.preprocess import _stop_on_first_interrupt, parse_size
from ti.errors import ConfigError
from ti.preprocess import caption_to_filename

REPO_ROOT = Path(__file__).resolve().parents[2]


def noise(size, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def folders(tmp_path):
    source = tmp_path / "raw"
    source.mkdir()
    noise((96, 64), 1).save(source / "wide.png")
    noise((64, 256), 2).save(source / "tall.jpg")
    (source / "tall.txt").write_text("tall tags", encoding="utf-8")
    return source, tmp_path / "train"


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


@pytest.mark.parametrize("text, size", [("512x768", (512, 768)), ("64X64", (64, 64)), (" 256 ", (256, 256))])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["512by512", "x512", "512x", "-64x64", "1.5x2"])
def test_parse_size_refuses(text):
    with pytest.raises(ConfigError, match="size: expected WxH"):
        parse_size(text)


def test_flip_and_size(folders, capsys):
    source, destination = folders
    assert main(["preprocess", str(source), str(destination), "--size", "64x64", "--flip"]) == 0
    assert pngs(destination) == ["00000-0-tall.png", "00000-1-tall.png", "00001-0-wide.png", "00001-1-wide.png"]
    assert all(Image.open(destination / name).size == (64, 64) for name in pngs(destination))
    captured = capsys.readouterr()
    assert f"{destination}: 2 of 2 files: wrote 4 pictures and 0 captions\n" in captured.out
    assert "preprocessing" in captured.err and "2/2" in captured.err  # the progress bar


def test_split_flags(folders):
    source, destination = folders
    argv = ["preprocess", str(source), str(destination), "--size", "64x64", "--split", "--split-overlap", "0"]
    assert main(argv) == 0
    assert pngs(destination) == [f"00000-{i}-tall.png" for i in range(4)] + ["00001-0-wide.png"]


def test_split_threshold_flag(folders):
    source, destination = folders
    assert main(["preprocess", str(source), str(destination), "--size", "64x64", "--split", "--split-threshold", "0.2"]) == 0
    assert pngs(destination) == ["00000-0-tall.png", "00001-0-wide.png"]  # 0.25 > 0.2: not split


def test_existing_caption_copy(folders):
    source, destination = folders
    assert main(["preprocess", str(source), str(destination), "--size", "64x64", "--existing-caption", "copy"]) == 0
    assert (destination / "00000-0-tall.txt").read_text(encoding="utf-8") == "tall tags"
    assert not (destination / "00001-0-wide.txt").exists()


def test_auto_crop_flags(folders, capsys):
    source, destination = folders
    argv = ["preprocess", str(source), str(destination), "--auto-crop", "--auto-crop-min-size", "64",
            "--auto-crop-max-size", "192", "--auto-crop-objective", "min-error"]  # fmt: skip
    assert main(argv) == 0
    assert pngs(destination) == ["00001-0-wide.png"]
    assert Image.open(destination / "00001-0-wide.png").size == (192, 128)  # 3:2 exactly
    # 1:4 is not within 10% of any size from 64 to 192 (the nearest, 64x192, is 25% off)
    assert "tall.jpg: no auto-crop size fits 64x256 within error threshold 0.1" in capsys.readouterr().out
    assert main(argv + ["--auto-crop-error-threshold", "0.3"]) == 0
    assert Image.open(destination / "00000-0-tall.png").size == (64, 192)


def test_focal_crop_flags(folders, capsys):
    source, destination = folders
    argv = ["preprocess", str(source), str(destination), "--size", "64x64", "--focal-crop", "--focal-face-weight", "0",
            "--focal-entropy-weight", "1", "--focal-edges-weight", "0"]  # fmt: skip
    assert main(argv) == 0
    assert pngs(destination) == ["00000-0-tall.png", "00001-0-wide.png"]
    assert "note:" not in capsys.readouterr().out  # no face weight: no OpenCV remark


def test_caption_with_tiny_blip_into_filename(folders, tmp_path):
    from ti.captioning import save_tiny_blip

    model_dir = save_tiny_blip(tmp_path / "blip")
    source, destination = folders
    argv = ["preprocess", str(source), str(destination), "--size", "64x64", "--caption", "--caption-model",
            str(model_dir), "--caption-in-filename", "--existing-caption", "append", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    names = pngs(destination)
    assert len(names) == 2 and names[0].startswith("00000-0-") and names[1].startswith("00001-0-")
    assert names[0] != "00000-0-tall.png" and names[1] != "00001-0-wide.png"  # named after captions
    captions = [(destination / name).with_suffix(".txt").read_text(encoding="utf-8") for name in names]
    assert captions[0].endswith(", tall tags") and len(captions[0]) > len(", tall tags")
    assert names[1][len("00001-0-"):-4] == caption_to_filename(captions[1])


def test_missing_caption_model_is_one_line_with_the_fix(folders, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source, destination = folders
    argv = ["preprocess", str(source), str(destination), "--caption", "--caption-model", str(tmp_path / "nowhere" / "BLIP")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: caption model folder") and "hf download" in error and "\n" not in error
    assert not destination.exists()  # validated before anything was written


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--size", "64by64"], "size"),
        (["--size", "100x100"], "width"),
        (["--split-overlap", "0.95"], "split overlap"),
        (["--auto-crop-min-size", "100"], "auto crop min size"),
    ],
)
def test_bad_option_exits_2_naming_it(folders, capsys, extra, field):
    source, destination = folders
    assert main(["preprocess", str(source), str(destination), *extra]) == 2
    assert capsys.readouterr().err.startswith(f"error: {field}: ")


def test_same_or_nested_destination_refused(folders, capsys):
    source, _ = folders
    for destination in (source, source / "out"):
        assert main(["preprocess", str(source), str(destination)]) == 2
        assert capsys.readouterr().err.startswith("error: destination: ")
    assert not (source / "out").exists()


def test_nothing_written_exits_1_and_lists_skipped(tmp_path, capsys):
    source = tmp_path / "raw"
    source.mkdir()
    (source / "broken.png").write_bytes(b"not a picture")
    assert main(["preprocess", str(source), str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"skipped {source / 'broken.png'}: not a readable picture" in out
    assert "1 of 1 files: wrote 0 pictures and 0 captions, skipped 1" in out


def test_first_ctrl_c_requests_a_stop_second_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with _stop_on_first_interrupt() as stop_requested:
        assert not stop_requested()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_cancels_and_exits_130(folders, capsys, monkeypatch):
    import ti.preprocess

    original = ti.preprocess._preprocess_one

    def interrupt_after_first(*args, **kwargs):
        original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during the first picture

    monkeypatch.setattr(ti.preprocess, "_preprocess_one", interrupt_after_first)
    source, destination = folders
    assert main(["preprocess", str(source), str(destination), "--size", "64x64"]) == 130
    assert pngs(destination) == ["00000-0-tall.png"]
    assert "cancelled" in capsys.readouterr().out


def test_python_dash_m_ti_preprocess(folders):
    source, destination = folders
    completed = subprocess.run(
        [sys.executable, "-m", "ti", "preprocess", str(source), str(destination), "--size", "64x64"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert pngs(destination) == ["00000-0-tall.png", "00001-0-wide.png"]
    assert "2 of 2 files: wrote 2 pictures" in completed.stdout
