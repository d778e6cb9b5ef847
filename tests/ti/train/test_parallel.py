"""Data-parallel training through accelerate (ti/train/parallel.py).

The real thing: `accelerate launch --multi_gpu --num_processes 2 … -m ti train-embedding …` runs
two CPU processes talking over gloo (`--cpu --num_processes 2` would silently run one). Two
processes with batch 1 each must train exactly what one process with batch 2 trains, resume
exactly, and only the main process may write.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ti.cli import main
from ti.formats import load_embedding_file
from ti.hypernetwork import load_hypernetwork_file
from ti.train.batches import BatchLayout, TrainingBatches
from ti.train.latents import CachedSample
from ti.train.parallel import SINGLE_PROCESS, DataParallel

REPO_ROOT = Path(__file__).resolve().parents[3]
ACCELERATE = Path(sys.executable).parent / "accelerate"
TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch_two_processes(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "ti", *arguments]
    # One thread per process, as in the one-process reference run (one_thread): a thread count
    # changes how float sums are split, which is noise these tests need not carry.
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
                   "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=cwd)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    return finished


@pytest.fixture
def one_thread():
    """The in-process reference run with one torch thread, like each launched process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _training_flags(kind: str, name: str, data: Path, folder: Path, logs: Path, steps: int, batch_size: int,
                    templates_dir: Path, save_every: int = 0) -> list[str]:
    folder_flag = "--embeddings-dir" if kind == "embedding" else "--hypernetwork-dir"
    lr = "0.01" if kind == "embedding" else "0.001"
    return [f"train-{kind}", name, "--data", str(data), "--model", "demo", folder_flag, str(folder),
            "--steps", str(steps), "--width", "64", "--height", "64", "--save-every", str(save_every),
            "--preview-every", "0", "--log-dir", str(logs), "--templates-dir", str(templates_dir),
            "--lr", lr, "--batch-size", str(batch_size), "--device", "cpu"]


def _losses(log_root: Path, csv_name: str) -> list[float]:
    [csv_path] = log_root.glob(f"*/*/{csv_name}")
    with csv_path.open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def test_two_processes_with_batch_one_train_what_one_process_with_batch_two_does_and_resume(tmp_path, kit, one_thread):
    data = tmp_path / "data"
    kit.write_images(data, 4)
    single, double = tmp_path / "single", tmp_path / "double"
    for folder in (single, double):
        folder.mkdir()
        kit.make_embedding(folder)

    # One process, batch 2, four steps (a copy at step 2).
    assert main(_training_flags("embedding", kit.name, data, single, tmp_path / "single-logs", 4, 2,
                                kit.templates_dir, save_every=2)) == 0
    [single_copy_2] = (tmp_path / "single-logs").glob(f"*/{kit.name}/embeddings/{kit.name}-2.pt")

    # Two processes, batch 1 each: two steps, then resumed to four.
    first = _launch_two_processes(_training_flags("embedding", kit.name, data, double, tmp_path / "double-logs", 2, 1,
                                                  kit.templates_dir, save_every=1), cwd=tmp_path)
    assert "2 processes, each with batch size 1" in first.stderr
    after_two = load_embedding_file(double / f"{kit.name}.pt")
    assert after_two.step == 2
    assert torch.allclose(after_two.vectors, load_embedding_file(single_copy_2).vectors, atol=TOLERANCE, rtol=0)

    _launch_two_processes(_training_flags("embedding", kit.name, data, double, tmp_path / "double-logs-resumed", 4, 1,
                                          kit.templates_dir), cwd=tmp_path)
    resumed, reference = load_embedding_file(double / f"{kit.name}.pt"), load_embedding_file(single / f"{kit.name}.pt")
    assert resumed.step == reference.step == 4
    difference = float((resumed.vectors - reference.vectors).abs().max())
    assert difference <= TOLERANCE, difference
    assert float((resumed.vectors - after_two.vectors).abs().max()) > 100 * TOLERANCE  # it did train on

    # The loss is agreed across processes; only the main process wrote: one run folder, one row per
    # step, one copy per save.
    single_losses = _losses(tmp_path / "single-logs", "textual_inversion_loss.csv")
    double_losses = (_losses(tmp_path / "double-logs", "textual_inversion_loss.csv")
                     + _losses(tmp_path / "double-logs-resumed", "textual_inversion_loss.csv"))
    assert len(double_losses) == 4
    assert max(abs(a - b) for a, b in zip(single_losses, double_losses)) <= 1e-4
    assert len(list((tmp_path / "double-logs").glob("*/*/settings-*.json"))) == 1
    copies = sorted(p.name for p in (tmp_path / "double-logs").glob(f"*/{kit.name}/embeddings/*.pt"))
    assert copies == [f"{kit.name}-1.pt", f"{kit.name}-2.pt"]


# How close is "the same training" for a hypernetwork? Measured on the tiny model (2 steps, lr
# 1e-3, 2-core x86 CPU): the update of each learned tensor, one process with batch 2 against two
# with batch 1 each, differs by at most 1.2e-4 of the update's norm; the one-process run differs
# from itself by as much (7.6e-5) when only its thread count changes, since both merely reorder
# float sums. Element by element that noise is not small: AdamW divides each gradient element by
# its own running size (its first step is lr * sign(g)), so where an element's true gradient is
# near zero the noise decides the step, up to lr (one machine saw a weight 1e-5 off). A real bug
# moves every learned tensor by most of its update instead: gradients not averaged across the
# processes gave 0.81-0.96, both processes taking the same samples 0.82-0.93. The bound sits
# about 80x from both.
RELATIVE_UPDATE_TOLERANCE = 1e-2


def test_two_processes_train_a_hypernetwork_like_one_with_twice_the_batch(tmp_path, kit, one_thread):
    data = tmp_path / "data"
    kit.write_images(data, 4)
    assert main(["create-hypernetwork", "hn", "--sizes", "32", "--hypernetwork-dir", str(tmp_path / "single")]) == 0
    (tmp_path / "double").mkdir()
    shutil.copy(tmp_path / "single" / "hn.pt", tmp_path / "double" / "hn.pt")  # the same random start
    shutil.copy(tmp_path / "single" / "hn.pt", tmp_path / "start.pt")
    assert main(_training_flags("hypernetwork", "hn", data, tmp_path / "single", tmp_path / "single-logs", 2, 2,
                                kit.templates_dir)) == 0
    _launch_two_processes(_training_flags("hypernetwork", "hn", data, tmp_path / "double", tmp_path / "double-logs",
                                          2, 1, kit.templates_dir), cwd=tmp_path)
    start_state = load_hypernetwork_file(tmp_path / "start.pt").state_dict()
    single = load_hypernetwork_file(tmp_path / "single" / "hn.pt")
    double = load_hypernetwork_file(tmp_path / "double" / "hn.pt")
    assert single.step == double.step == 2
    single_state, double_state = single.state_dict(), double.state_dict()
    assert single_state.keys() == double_state.keys()
    learned = [key for key in single_state if float((single_state[key] - start_state[key]).abs().max()) > 1e-3]
    for key in learned:
        single_update, double_update = single_state[key] - start_state[key], double_state[key] - start_state[key]
        relative = float((double_update - single_update).norm() / single_update.norm())
        assert relative <= RELATIVE_UPDATE_TOLERANCE, (key, relative)
    # The key module's biases shift every key alike, which softmax ignores: their true gradient is
    # zero, and AdamW turns the float noise in it into steps of any sign. Everything else learns.
    assert sorted(set(single_state) - set(learned)) == ["pairs.32.0.linear.0.bias", "pairs.32.0.linear.1.bias"]
    assert list((tmp_path / "double-logs").glob("*/*/hypernetwork_loss.csv"))


def test_two_processes_train_an_sdxl_embedding_like_one_with_twice_the_batch(tmp_path, kit, one_thread):
    """SDXL through accelerate: both halves of the vectors, each process's pictures with their own
    size time ids; two processes with batch 1 train what one with batch 2 does."""
    from ti.demo import build_demo_sdxl_pipeline

    model_dir = tmp_path / "tiny-xl"
    build_demo_sdxl_pipeline().save_pretrained(model_dir)
    data = tmp_path / "data"
    kit.write_images(data, 4)
    start = None
    for folder in ("single", "double"):
        assert main(["create", "xltok", "--init-text", "red car", "--vectors", "2", "--model", str(model_dir),
                     "--device", "cpu", "--embeddings-dir", str(tmp_path / folder)]) == 0
        start = load_embedding_file(tmp_path / folder / "xltok.safetensors")

    def flags(folder: str, batch_size: int) -> list[str]:
        arguments = _training_flags("embedding", "xltok", data, tmp_path / folder, tmp_path / f"{folder}-logs", 2,
                                    batch_size, kit.templates_dir)
        arguments[arguments.index("demo")] = str(model_dir)
        return arguments

    assert main(flags("single", 2)) == 0
    _launch_two_processes(flags("double", 1), cwd=tmp_path)
    single = load_embedding_file(tmp_path / "single" / "xltok.safetensors")
    double = load_embedding_file(tmp_path / "double" / "xltok.safetensors")
    assert single.is_sdxl and double.is_sdxl and single.step == double.step == 2
    for half, vectors in single.sdxl_parts().items():  # both halves trained
        assert float((vectors - start.sdxl_parts()[half]).abs().max()) > 100 * TOLERANCE, half
    difference = float((double.vectors - single.vectors).abs().max())
    assert difference <= TOLERANCE, difference


def test_each_process_takes_its_own_positions_of_the_global_micro_batch():
    assert SINGLE_PROCESS.share(4) == slice(0, 4)
    assert DataParallel(num_processes=2, process_index=0).share(4) == slice(0, 2)
    assert DataParallel(num_processes=2, process_index=1).share(4) == slice(2, 4)


def test_a_share_of_a_micro_batch_is_exactly_that_part_of_the_whole():
    samples = [CachedSample(source=Path(f"{index}.png"), flipped=False, caption=f"tag{index}, red", bucket=(8, 8),
                            latent=torch.full((4, 1, 1), float(index)), latent_std=None, loss_weight=None)
               for index in range(8)]
    layout = BatchLayout.for_dataset(len(samples), 4, 1)
    batches = TrainingBatches(samples, layout, ["a photo of [name], [filewords]"], "tok", seed=7, shuffle_tags=True,
                              tag_dropout=0.3, num_train_timesteps=1000)
    whole = batches.micro_batch(3, 0)
    halves = [batches.micro_batch(3, 0, DataParallel(2, rank).share(4)) for rank in (0, 1)]
    assert halves[0].prompts + halves[1].prompts == whole.prompts
    for field in ("latents", "noise", "timesteps"):
        assert torch.equal(torch.cat([getattr(half, field) for half in halves]), getattr(whole, field)), field


def test_accelerates_mixed_precision_flag_picks_half_precision_but_its_default_no_does_not(monkeypatch):
    from ti.train.parallel import launcher_mixed_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert launcher_mixed_precision() is None
    for value, expected in (("bf16", "bf16"), ("FP16", "fp16"), ("no", None), ("fp8", None)):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", value)
        assert launcher_mixed_precision() == expected


def test_without_a_launcher_training_is_single_process(monkeypatch):
    from ti.train.parallel import data_parallel_from_environment

    for variable in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    assert data_parallel_from_environment() is SINGLE_PROCESS
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert data_parallel_from_environment("cpu") is SINGLE_PROCESS
