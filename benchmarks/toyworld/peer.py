"""Run diffusers' examples/textual_inversion/textual_inversion.py on the toy world.

The script is not ours and is not committed: pass its path (from a diffusers checkout of the
same version as ours). It runs in its own venv (benchmarks/setup_peer_venv.sh: it needs
torchvision). It writes learned_embeds-steps-<N>.safetensors every --save_steps; each file's
modification time, from the launch, is the time that step was reached.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PeerRun:
    checkpoints: dict[int, Path]  # step -> learned_embeds-steps-<step>.safetensors
    seconds_at: dict[int, float]  # step -> seconds from launch until that file existed
    wall_seconds: float
    command: list[str]


def run_peer(script: Path, python: Path, world: Path, data_dir: Path, out_dir: Path, *, steps: int, save_every: int,
             learning_rate: float, batch_size: int, initializer: str, seed: int, threads: int = 0,
             extra_args: tuple[str, ...] = ()) -> PeerRun:
    # absolute, not resolved: the venv's python is a link, and following it would leave the venv
    command = [str(Path(python).absolute()), str(Path(script).absolute()),
               "--pretrained_model_name_or_path", str(Path(world).absolute()), "--train_data_dir", str(Path(data_dir).absolute()),
               "--placeholder_token", "<concept>", "--initializer_token", initializer,
               "--resolution", "64", "--train_batch_size", str(batch_size), "--max_train_steps", str(steps),
               "--learning_rate", str(learning_rate), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
               "--save_steps", str(save_every), "--checkpointing_steps", str(steps + 1),
               "--output_dir", str(Path(out_dir).absolute()), "--seed", str(seed), "--dataloader_num_workers", "0",
               "--mixed_precision", "no", *extra_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.time()
    finished = subprocess.run(command, env=env, cwd=out_dir.parent, capture_output=True, text=True)
    wall = time.time() - started
    if finished.returncode != 0:
        raise RuntimeError(f"diffusers' textual_inversion.py failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    checkpoints, seconds_at = {}, {}
    for path in out_dir.glob("learned_embeds-steps-*.safetensors"):
        step = int(re.search(r"steps-(\d+)", path.name).group(1))
        checkpoints[step] = path
        seconds_at[step] = path.stat().st_mtime - started
    return PeerRun(checkpoints, seconds_at, wall, command)
