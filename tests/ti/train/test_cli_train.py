"""`python -m ti train-embedding`: a real run in a subprocess, refusals, Ctrl-C handling."""

import os
import signal
import subprocess
import sys

import pytest

from ti.cli import main
from ti.cli.train_embedding import StopOnCtrlC
from ti.formats import load_embedding_file


def test_cli_trains_two_steps_on_the_demo_model(tmp_path, dataset_dir, embeddings_dir, kit):
    repo_root = kit.templates_dir.parent
    command = [sys.executable, "-m", "ti", "train-embedding", "mytok", "--data", str(dataset_dir), "--model", "demo",
               "--embeddings-dir", str(embeddings_dir), "--steps", "2", "--width", "64", "--height", "64",
               "--save-every", "2", "--preview-every", "0", "--log-dir", str(tmp_path / "logs"),
               "--templates-dir", str(kit.templates_dir), "--lr", "0.01:1, 0.005", "--flip"]
    environment = {**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "finished: mytok trained to step 2" in finished.stdout
    assert load_embedding_file(embeddings_dir / "mytok.pt").step == 2
    assert len(list((tmp_path / "logs").glob("*/mytok/embeddings/mytok-2.pt"))) == 1


@pytest.mark.parametrize("flags, expected", [
    (["--batch-size", "0"], "batch_size: must be 1 or more"),
    (["--lr", "0.1:x"], "learning_rate: "),
    (["--width", "500"], "width: must be a multiple of 8"),
    (["--preview-size", "64"], "size: expected WxH"),
    (["--train-encoders", "clip_x"], "train_encoders: expected one of both, clip_l, clip_g"),
])
def test_cli_refuses_bad_flags_in_one_line(capsys, dataset_dir, embeddings_dir, kit, flags, expected):
    code = main(["train-embedding", "mytok", "--data", str(dataset_dir), "--embeddings-dir", str(embeddings_dir),
                 "--templates-dir", str(kit.templates_dir), *flags])
    error = capsys.readouterr().err
    assert code == 2 and expected in error and len(error.strip().splitlines()) == 1


def test_cli_missing_embedding_says_how_to_create_it(capsys, dataset_dir, tmp_path, kit):
    code = main(["train-embedding", "newtok", "--data", str(dataset_dir), "--embeddings-dir", str(tmp_path),
                 "--templates-dir", str(kit.templates_dir)])
    assert code == 2 and "python -m ti create newtok" in capsys.readouterr().err


def test_ctrl_c_asks_for_a_stop_then_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with StopOnCtrlC() as stop:
        assert signal.getsignal(signal.SIGINT) == stop.handle
        stop.handle(signal.SIGINT, None)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) == before
