"""Embedding training: step time and peak memory of our loop against the floor.

    python benchmarks/train_speed.py            # tiny demo model, then an SD1.5-shaped model
    python benchmarks/train_speed.py --quick    # tiny model only (seconds)

For each model, batch size 1 at --size px (256 by default), three ways to do one TI step:

  (a) ours: train_embedding, latents cached once up front;
  (b) ours without the cache: the same loop, but every micro-batch VAE-encodes its images
      again (what a naive loop does);
  (c) the floor: text encoder forward+backward (gradients into its input embeddings) and UNet
      forward+backward on one fixed, precomputed batch; nothing else at all.

Time: median seconds per step after warm-up steps, wall clock and CPU time of the process (the
CPU time is what other work on a shared machine disturbs least). Memory: the peak resident set (CPU) or
torch.cuda.max_memory_allocated (CUDA) during the run, above what the built model used; every
measurement runs in a fresh process.
Machines differ (design.md §2), so compare ratios from one run, not seconds across runs.
The SD1.5-shaped model has random weights (diffusers' default UNet config with
cross_attention_dim 768, a 768-wide 12-layer CLIP text encoder, SD's VAE config): the same
shapes and FLOPs as the real model, nothing downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ti.embedding import Embedding  # noqa: E402
from ti.formats import save_embedding_file  # noqa: E402
from ti.pipeline import LoadedModel, demo_sha256  # noqa: E402
from ti.train import TrainConfig, TrainHooks, train_embedding  # noqa: E402
from ti.train.batches import TrainingBatches  # noqa: E402
from ti.train.dataset import iter_prepared_images  # noqa: E402
from ti.train.latents import pixels_to_tensor  # noqa: E402

NAME = "benchtok"
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "textual_inversion_templates"


class PeakMemory:
    """Peak memory above the level at start: CUDA allocator stats, or RSS sampled every 2 ms."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base, self._max, self._running = self._rss(), self._rss(), True

        def sample():
            while self._running:
                self._max = max(self._max, self._rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
        else:
            self._running = False
            self._thread.join()
            self.peak_bytes = self._max - self._base
        return False


def build_sd15_shaped(device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ti.demo import build_demo_tokenizer
    from ti.samplers import make_scheduler

    tokenizer = build_demo_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=make_scheduler("Euler a", None), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    pipe.to(device=device, dtype=dtype)
    return LoadedModel(pipe=pipe, name="sd15-shaped-random", source="benchmark", sha256="0" * 64, device=device,
                       dtype=dtype)


def build_tiny(device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from ti.demo import build_demo_pipeline

    pipe = build_demo_pipeline()
    pipe.to(device=device, dtype=dtype)
    return LoadedModel(pipe=pipe, name="demo", source="demo", sha256=demo_sha256(pipe), device=device, dtype=dtype,
                       is_demo=True)


def make_workspace(model: LoadedModel, size: int, num_images: int) -> tuple[Path, Path, Path]:
    root = Path(tempfile.mkdtemp(prefix="ti-train-bench-"))
    data, embeddings = root / "data", root / "embeddings"
    data.mkdir()
    embeddings.mkdir()
    rng = np.random.default_rng(0)
    for index in range(num_images):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / f"{index:05d}-0-a red car, blue sky.png")
    vectors = torch.randn(2, model.text_width, generator=torch.Generator().manual_seed(0)) * 0.02
    save_embedding_file(Embedding(NAME, vectors=vectors, step=0), embeddings / f"{NAME}.pt")
    return root, data, embeddings


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is what a busy shared machine
    disturbs least, wall time what a user waits."""
    return time.perf_counter(), time.process_time()


def _median_step(stamps: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """Median wall and CPU seconds between consecutive stamps, after the warm-up steps."""
    walls, cpus = zip(*stamps)
    return (float(statistics.median(np.diff(walls)[warmup:])), float(statistics.median(np.diff(cpus)[warmup:])))


def time_ours(model: LoadedModel, size: int, steps: int, warmup: int, cache: bool) -> tuple[float, float, int, int]:
    """Median step time (wall, CPU) of train_embedding after `warmup` (>= 1) steps, the run's peak
    memory, and the FLOPs of its first step (counted while it runs; it is a warm-up step)."""
    root, data, embeddings = make_workspace(model, size, num_images=4)
    config = TrainConfig(name=NAME, data_dir=data, width=size, height=size, max_steps=warmup + steps, save_every=0,
                         preview_every=0, log_dir=str(root / "logs"), templates_dir=str(TEMPLATES_DIR))
    stamps: list[tuple[float, float]] = []
    flop_counter = FlopCounterMode(display=False)

    def loop_started(text: str) -> None:  # the status line just before the first step
        if text.startswith("training "):
            flop_counter.__enter__()
            stamps.append(_clock())

    def step_done(progress) -> None:
        if progress.step == 1:
            flop_counter.__exit__(None, None, None)
        stamps.append(_clock())

    hooks = TrainHooks(on_progress=step_done, on_status=loop_started)
    original_micro_batch = TrainingBatches.micro_batch
    if not cache:
        pixels_by_source = {item.path: pixels_to_tensor(item.pixels)
                            for item in iter_prepared_images(data, size, size, False, False)}
        vae, scaling = model.pipe.vae, float(model.pipe.vae.config.scaling_factor)

        def micro_batch_encoding_again(self, step, micro_index):
            batch = original_micro_batch(self, step, micro_index)
            sources = [self.samples[i].source for i in self.sample_indices(step, micro_index)]
            pixels = torch.cat([pixels_by_source[s] for s in sources]).to(model.device, model.dtype)
            with torch.no_grad():
                batch.latents = vae.encode(pixels).latent_dist.sample().float() * scaling
            return batch

        TrainingBatches.micro_batch = micro_batch_encoding_again  # benchmark only, restored below
    try:
        with PeakMemory(model.device) as memory:
            train_embedding(model, config, embeddings, hooks)
    finally:
        TrainingBatches.micro_batch = original_micro_batch
    return (*_median_step(stamps, warmup), memory.peak_bytes, flop_counter.get_total_flops())


def time_floor(model: LoadedModel, size: int, steps: int, warmup: int) -> tuple[float, float, int, int]:
    """Text encoder + UNet forward/backward on one precomputed batch: no data, no optimizer."""
    pipe, device, dtype = model.pipe, model.device, model.dtype
    generator = torch.Generator().manual_seed(0)
    latent_shape = (1, 4, size // 8, size // 8)
    noisy = torch.randn(latent_shape, generator=generator).to(device, dtype)
    noise = torch.randn(latent_shape, generator=generator).to(device)
    timesteps = torch.tensor([500], device=device)
    input_ids = pipe.tokenizer(["a painting of a red car, blue sky"], padding="max_length", max_length=77,
                               return_tensors="pt").input_ids.to(device)
    token_embedding = pipe.text_encoder.get_input_embeddings()
    with torch.no_grad():
        fixed_embeds = token_embedding(input_ids)

    class LeafEmbedding(torch.nn.Module):  # the text encoder's input embeddings as a leaf with a gradient
        def forward(self, ids):
            return self.leaf

    leaf_module = LeafEmbedding()

    def floor_step() -> None:
        leaf_module.leaf = fixed_embeds.detach().clone().requires_grad_(True)
        conditioning = pipe.text_encoder(input_ids)[0]
        prediction = pipe.unet(noisy, timesteps, encoder_hidden_states=conditioning).sample
        torch.nn.functional.mse_loss(prediction.float(), noise).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    pipe.text_encoder.set_input_embeddings(leaf_module)
    try:
        with PeakMemory(device) as memory:
            with FlopCounterMode(display=False) as flop_counter:  # the first warm-up step, counted
                floor_step()
            stamps = [_clock()]
            for _ in range(warmup - 1 + steps):
                floor_step()
                stamps.append(_clock())
    finally:
        pipe.text_encoder.set_input_embeddings(token_embedding)
    flops = flop_counter.get_total_flops()
    return (*_median_step(stamps, warmup - 1), memory.peak_bytes, flops)


WAYS = ("c", "a", "b")
BUILDERS = {"tiny": build_tiny, "sd15": build_sd15_shaped}


def run_worker(model_key: str, way: str, size: int, steps: int, warmup: int, device_name: str) -> None:
    """One measurement in this (fresh) process, printed as a JSON line: a fresh process per
    measurement, so memory one way freed and the allocator kept cannot hide the next one's peak."""
    device = torch.device(device_name)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = BUILDERS[model_key](device, dtype)
    warmup = max(1, warmup)  # the first step is the one whose FLOPs are counted
    if way == "c":
        wall, cpu, peak, flops = time_floor(model, size, steps, warmup)
    else:
        wall, cpu, peak, flops = time_ours(model, size, steps, warmup, cache=(way == "a"))
    print(json.dumps({"wall": wall, "cpu": cpu, "peak": peak, "flops": flops}))


def bench_model(label: str, model_key: str, size: int, steps: int, warmup: int, rounds: int, device: str) -> dict:
    """Each way `rounds` times, interleaved (a busy machine then hurts them alike); the best time
    and the largest peak of each are kept."""
    results: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(rounds):
        for way in WAYS:
            command = [sys.executable, __file__, "--worker", model_key, way, "--size", str(size), "--steps", str(steps),
                       "--warmup", str(warmup), "--device", device]
            finished = subprocess.run(command, capture_output=True, text=True, check=False)
            if finished.returncode != 0:
                raise RuntimeError(f"worker {model_key}/{way} failed:\n{finished.stderr[-3000:]}")
            measured = json.loads(finished.stdout.strip().splitlines()[-1])
            results[way].append(measured)
            print(f"  {label} {way}: {measured['wall']:.4f} s/step wall, {measured['cpu']:.4f} CPU s/step, "
                  f"{measured['flops'] / 1e9:.1f} GFLOP/step, peak {measured['peak'] / 2**20:.0f} MiB", flush=True)
    best = {way: {"wall": min(r["wall"] for r in runs), "cpu": min(r["cpu"] for r in runs),
                  "peak": max(r["peak"] for r in runs), "flops": runs[0]["flops"]} for way, runs in results.items()}
    return {"label": label, "size": size, **best}


def print_table(rows: list[dict]) -> None:
    print()
    print(f"{'model':<22}{'way':<30}{'wall s/step':>12}{'vs floor':>9}{'CPU s/step':>12}{'vs floor':>9}"
          f"{'GFLOP/step':>12}{'vs floor':>9}{'peak MiB':>10}")
    names = {"a": "(a) ours", "b": "(b) ours, no latent cache", "c": "(c) floor: TE+UNet fwd/bwd"}
    for row in rows:
        floor = row["c"]
        for way in ("c", "a", "b"):
            measured = row[way]
            print(f"{row['label'] + ' @' + str(row['size']) + 'px':<22}{names[way]:<30}"
                  f"{measured['wall']:>12.4f}{measured['wall'] / floor['wall']:>8.3f}x"
                  f"{measured['cpu']:>12.4f}{measured['cpu'] / floor['cpu']:>8.3f}x"
                  f"{measured['flops'] / 1e9:>12.2f}{measured['flops'] / floor['flops']:>8.3f}x{measured['peak'] / 2**20:>10.0f}")
    print("\nTarget: (a) <= 1.05 x (c). On a busy shared machine times vary by tens of percent from run to run;"
          "\nthe FLOP ratio (counted by torch, the same on every machine) says whether ours does extra work.\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only")
    parser.add_argument("--size", type=int, default=256, help="training image size in px (default 256)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per way (default: 20 tiny, 3 SD1.5)")
    parser.add_argument("--warmup", type=int, default=-1, help="untimed steps first (default: 3 tiny, 1 SD1.5)")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions of each way; the best time is kept")
    parser.add_argument("--device", default=None)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        run_worker(args.worker[0], args.worker[1], args.size, args.steps, args.warmup, device)
        return 0
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [bench_model("tiny demo", "tiny", args.size, args.steps or 20, 3 if args.warmup < 0 else args.warmup,
                        args.rounds, device)]
    if not args.quick:
        rows.append(bench_model("SD1.5-shaped", "sd15", args.size, args.steps or 3, 1 if args.warmup < 0 else args.warmup,
                                args.rounds, device))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
