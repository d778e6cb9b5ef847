"""Embedding training: step time and peak memory of each speed option against the floor.

    python benchmarks/train_speed.py                 # CPU: tiny + SD1.5-shaped, 256 px, batch 1, 2, 4
    python benchmarks/train_speed.py --quick         # tiny model only
    python benchmarks/train_speed.py --compile       # also torch.compile (tiny model unless --compile-models)
    python benchmarks/train_speed.py --models sd15 --batch-sizes 1 --presets fp32,bf16 --rounds 2
    python benchmarks/train_speed.py --models sdxl --batch-sizes 1 --presets fp32 --uncached none
    python benchmarks/train_speed.py                 # on CUDA: SD1.5-shaped, 512 px, batch 1, 4, 8, bf16 + fp16

For each model and batch size, three ways to do one TI step (train_speed_measure.py does them):

  floor     text encoder forward+backward (gradients into its input embeddings) and UNet
            forward+backward on one fixed, precomputed batch; nothing else. One per precision.
  ours      train_embedding with a preset of TrainConfig's speed options (below), latents cached.
  uncached  the same loop VAE-encoding every picture again each step (what a naive loop does).

Presets: fp32, bf16, fp16 (mixed_precision: the frozen UNet, VAE and text encoder in that dtype;
the model is built in it, as the CLI loads it); +gc gradient checkpointing; +cl channels_last;
+compile compile_unet; +clip_l (SDXL only) --train-encoders clip_l, te2's outputs cached. Each preset is compared with the floor of its precision and with ours in
fp32.

Time: median seconds per step after warm-up steps, wall clock and CPU time of the process; the
best of --rounds (rounds interleave the ways, so load on a shared machine hits them alike).
Memory: the peak above the built model (CPU: resident set; CUDA: allocated). FLOPs: counted by
torch on one step, the same on every machine (a compiled UNet's kernels cannot be counted).
Machines differ (design.md §2), so compare ratios from one run, not seconds across runs. The
SD1.5-shaped model has random weights: the real model's shapes and FLOPs, nothing downloaded.

On a CPU that other work shares, use --threads 1: torch's OpenMP threads wait for each other at
every operation, so when another process holds one of their cores, steps get several times slower
(CPU time too: the waiting spins), and by a different amount each time. One thread loses only
the time it is descheduled, which CPU time leaves out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed_measure import PRESETS, SDXL_ONLY_PRESETS  # noqa: E402

MEASURE_SCRIPT = Path(__file__).resolve().parent / "train_speed_measure.py"
MODEL_LABELS = {"tiny": "tiny demo", "sd15": "SD1.5-shaped", "sdxl": "SDXL-shaped"}
PRECISIONS = ("fp32", "bf16", "fp16")
CHECK_FLOOR_RATIO = 1.05  # ours <= 1.05 × the floor of its precision
CHECK_FAST_RATIO = 0.5  # the fastest CPU preset <= 0.5 × ours in fp32
CHECK_PEAK_SHARE = 0.40  # CUDA: bf16 at the largest batch reaches >= 40% of the GPU's bf16 peak
# Dense bf16 tensor-core peaks in TFLOP/s, by a part of torch.cuda.get_device_name(); first match wins.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0}


@dataclass(frozen=True)
class Measurement:
    """What one table row measures."""

    model: str  # "tiny" | "sd15"
    batch_size: int
    way: str  # "floor" | "ours" | "uncached"
    preset: str  # a PRESETS key; for the floor, the bare precision

    @property
    def precision(self) -> str:
        return PRESETS[self.preset].precision

    @property
    def option(self) -> str:
        return {"floor": f"floor {self.preset}", "ours": self.preset, "uncached": f"{self.preset} uncached"}[self.way]


def plan_group(model: str, batch_size: int, presets: list[str], uncached: list[str]) -> list[list[Measurement]]:
    """The processes for one model and batch size, each a list of measurements: one process per
    precision (floor, ours plain, the other presets, then uncached) and one per compiled preset.
    The floor and ours of a precision run back to back, so the same load hits both."""
    processes = []
    for precision in PRECISIONS:
        mine = [p for p in presets if PRESETS[p].precision == precision and not PRESETS[p].compile_unet]
        if not mine:
            continue
        mine.sort(key=lambda p: p != precision)  # the plain preset first
        process = [Measurement(model, batch_size, "floor", precision)]
        process += [Measurement(model, batch_size, "ours", p) for p in mine]
        process += [Measurement(model, batch_size, "uncached", p) for p in mine if p in uncached]
        processes.append(process)
    processes += [[Measurement(model, batch_size, "ours", p)] for p in presets if PRESETS[p].compile_unet]
    return processes


def run_process(measurements: list[Measurement], args, steps: int, warmup: int) -> list[dict]:
    """Run one worker process; the results of the measurements it finished, in order."""
    specs = [{"model": m.model, "way": m.way, "preset": m.preset, "size": args.size, "batch_size": m.batch_size,
              "steps": steps, "warmup": max(warmup, 3) if PRESETS[m.preset].compile_unet else warmup,
              "device": args.device, "threads": args.threads} for m in measurements]
    finished = subprocess.run([sys.executable, str(MEASURE_SCRIPT), json.dumps(specs)], capture_output=True,
                              text=True, check=False)
    results = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode != 0:
        # Report it and go on with the rest: one failing option must not cost a long run its table.
        failed = [m.option for m in measurements[len(results):]]
        print(f"  FAILED {MODEL_LABELS[measurements[0].model]} batch {measurements[0].batch_size} {', '.join(failed)} "
              f"(exit status {finished.returncode}):\n{finished.stderr[-3000:]}", flush=True)
    return results


def best_of(runs: list[dict]) -> dict:
    """The best time of the rounds (load only ever slows a step down), the largest peak."""
    return {"wall": min(r["wall"] for r in runs), "cpu": min(r["cpu"] for r in runs),
            "first_step": min(r["first_step"] for r in runs), "peak": max(r["peak"] for r in runs),
            "flops": runs[0]["flops"], "weights": runs[0]["weights"]}


def measure_all(args) -> dict[Measurement, dict]:
    """Every measurement the arguments ask for, the best of the rounds; after Ctrl-C, those done."""
    results: dict[Measurement, list[dict]] = {}
    started = time.perf_counter()
    try:
        for model in args.models:
            steps = args.steps or (10 if model == "tiny" or args.device == "cuda" else 3)
            warmup = args.warmup if args.warmup >= 0 else (2 if model == "tiny" or args.device == "cuda" else 1)
            rounds = args.rounds or (2 if model == "tiny" else 1)
            model_presets = [p for p in args.presets if (not PRESETS[p].compile_unet or model in args.compile_models)
                             and (p not in SDXL_ONLY_PRESETS or model == "sdxl")]
            for batch_size in args.batch_sizes:
                processes = plan_group(model, batch_size, model_presets, args.uncached)
                for round_index in range(rounds):
                    # Alternate the order of the processes, so a slow start or end of a round is shared.
                    for process in processes if round_index % 2 == 0 else processes[::-1]:
                        for measurement, result in zip(process, run_process(process, args, steps, warmup)):
                            results.setdefault(measurement, []).append(result)
                            print(f"  [{(time.perf_counter() - started) / 60:5.1f} min] {MODEL_LABELS[model]} "
                                  f"batch {batch_size} {measurement.option}: {result['wall']:.4f} s/step wall, "
                                  f"{result['cpu']:.4f} CPU, peak {result['peak'] / 2**20:.0f} MiB", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the table has what was measured before", flush=True)
    return {measurement: best_of(runs) for measurement, runs in results.items()}


def _ratio(value: float, base: dict | None, key: str) -> str:
    return f"{value / base[key]:.3f}x" if base else "-"


def print_table(best: dict[Measurement, dict]) -> None:
    header = (f"{'model':<14}{'batch':>5}  {'option':<19}{'wall s/step':>12}{'x floor':>9}{'x fp32':>9}"
              f"{'CPU s/step':>12}{'x floor':>9}{'peak MiB':>10}{'GFLOP/step':>12}{'TFLOP/s':>9}")
    print("\n" + header + "\n" + "-" * len(header))
    previous_group = None
    for m, measured in best.items():
        if previous_group not in (None, (m.model, m.batch_size)):
            print()
        previous_group = (m.model, m.batch_size)
        floor = best.get(Measurement(m.model, m.batch_size, "floor", m.precision))
        fp32 = best.get(Measurement(m.model, m.batch_size, "ours", "fp32"))
        flops = measured["flops"]  # None for a compiled UNet
        gflops = f"{flops / 1e9:.2f}" if flops else "-"
        tflops_per_s = f"{flops / measured['wall'] / 1e12:.3f}" if flops else "-"
        print(f"{MODEL_LABELS[m.model]:<14}{m.batch_size:>5}  {m.option:<19}{measured['wall']:>12.4f}"
              f"{_ratio(measured['wall'], floor, 'wall'):>9}{_ratio(measured['wall'], fp32, 'wall'):>9}"
              f"{measured['cpu']:>12.4f}{_ratio(measured['cpu'], floor, 'cpu'):>9}{measured['peak'] / 2**20:>10.0f}"
              f"{gflops:>12}{tflops_per_s:>9}")
    print("\nx floor: against the floor of the same precision; x fp32: against ours in fp32. peak: above the built "
          "model.\n+gc gradient checkpointing, +cl channels_last, +compile torch.compile of the UNet; uncached: the "
          "VAE encodes every picture every step.")
    weights = sorted({(m.model, m.precision, measured["weights"]) for m, measured in best.items()})
    print("model weights (UNet + VAE + text encoders): "
          + ", ".join(f"{MODEL_LABELS[model]} {precision} {size / 2**20:.0f} MiB"
                      for model, precision, size in weights))
    for m, measured in best.items():
        if PRESETS[m.preset].compile_unet:
            print(f"compiling: {MODEL_LABELS[m.model]} batch {m.batch_size} {m.option}: first step "
                  f"{measured['first_step']:.1f} s (compile + one step) against {measured['wall']:.3f} s/step after")


def bf16_peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    name = torch.cuda.get_device_name()
    return next((peak for part, peak in BF16_PEAK_TFLOPS.items() if part in name), None)


def print_checks(best: dict[Measurement, dict], args) -> None:
    print("\nTargets:")
    for m, measured in best.items():
        floor = best.get(Measurement(m.model, m.batch_size, "floor", m.precision))
        if m.way == "ours" and m.preset == m.precision and floor:
            wall, cpu = measured["wall"] / floor["wall"], measured["cpu"] / floor["cpu"]
            print(f"  {'PASS' if wall <= CHECK_FLOOR_RATIO else 'MISS'}  {MODEL_LABELS[m.model]} batch {m.batch_size} "
                  f"{m.preset}: ours {wall:.3f}x the floor (wall; CPU time {cpu:.3f}x), target <= {CHECK_FLOOR_RATIO}")
    if args.device == "cpu":
        for m, fp32 in best.items():
            if m.way != "ours" or m.preset != "fp32":
                continue
            same_group = {other: measured for other, measured in best.items()
                          if other.way == "ours" and (other.model, other.batch_size) == (m.model, m.batch_size)}
            fastest = min(same_group, key=lambda other: same_group[other]["wall"])
            ratio = same_group[fastest]["wall"] / fp32["wall"]
            print(f"  {'PASS' if ratio <= CHECK_FAST_RATIO else 'MISS'}  {MODEL_LABELS[m.model]} batch {m.batch_size}: "
                  f"fastest preset {fastest.preset} {ratio:.3f}x ours in fp32 (wall), target <= {CHECK_FAST_RATIO}")
    else:
        peak = bf16_peak_tflops(args)
        largest = max(args.batch_sizes)
        for m, measured in best.items():
            if m.way == "ours" and m.preset == "bf16" and m.batch_size == largest and measured["flops"]:
                achieved = measured["flops"] / measured["wall"] / 1e12
                if peak is None:
                    print(f"  ?     {MODEL_LABELS[m.model]} batch {largest} bf16: {achieved:.1f} TFLOP/s; unknown GPU "
                          f"peak, give --peak-tflops")
                    continue
                print(f"  {'PASS' if achieved / peak >= CHECK_PEAK_SHARE else 'MISS'}  {MODEL_LABELS[m.model]} batch "
                      f"{largest} bf16: {achieved:.1f} TFLOP/s = {achieved / peak:.0%} of the {peak:.0f} TFLOP/s bf16 "
                      f"peak, target >= {CHECK_PEAK_SHARE:.0%}")


def parse_args():
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only")
    parser.add_argument("--models", help="comma-separated: tiny, sd15, sdxl (default: tiny and sd15 on CPU, sd15 on "
                                         "CUDA; sdxl is reduced on a CPU, full size on CUDA)")
    parser.add_argument("--size", type=int, help="training image size in px (default 256 on CPU, 512 on CUDA)")
    parser.add_argument("--batch-sizes", help="comma-separated (default 1,2,4 on CPU; 1,4,8 on CUDA)")
    parser.add_argument("--presets", help=f"comma-separated, of {', '.join(PRESETS)} "
                                          f"(default fp32,bf16,fp32+gc,fp32+cl,bf16+cl on CPU; bf16,fp16 on CUDA)")
    parser.add_argument("--uncached", help="presets also measured without the latent cache, if among --presets "
                                           "(default fp32,bf16 on CPU, bf16 on CUDA; 'none': no such row)")
    parser.add_argument("--compile", action="store_true",
                        help="add fp32+compile and bf16+compile (on CUDA: bf16+compile and fp16+compile)")
    parser.add_argument("--compile-models", help="models the compile presets run on (default: tiny on CPU, where "
                                                 "compiling SD1.5's UNet takes long; all on CUDA)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default 10; SD1.5 on CPU 3)")
    parser.add_argument("--warmup", type=int, default=-1, help="untimed steps first (default 2; SD1.5 on CPU 1)")
    parser.add_argument("--rounds", type=int, default=0, help="repetitions, interleaved; the best kept "
                                                              "(default 2 tiny, 1 SD1.5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each worker (default torch's)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu",
                        help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in BF16_PEAK_TFLOPS")
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    args.device = "cuda" if on_cuda else args.device
    args.models = (["tiny"] if args.quick else args.models.split(",") if args.models
                   else ["sd15"] if on_cuda else ["tiny", "sd15"])
    args.size = args.size or (512 if on_cuda else 256)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,4,8" if on_cuda else "1,2,4")).split(",")]
    # fp16 on a CPU is emulated, many times slower than float32, and nobody trains so: off by default.
    default_presets = "bf16,fp16" if on_cuda else "fp32,bf16,fp32+gc,fp32+cl,bf16+cl"
    args.presets = (args.presets or default_presets).split(",")
    if args.compile:
        args.presets += ["bf16+compile", "fp16+compile"] if on_cuda else ["fp32+compile", "bf16+compile"]
    uncached = args.uncached or ("bf16" if on_cuda else "fp32,bf16")
    args.uncached = [] if uncached == "none" else uncached.split(",")
    args.compile_models = (args.compile_models.split(",") if args.compile_models
                           else args.models if on_cuda else ["tiny"])
    unknown = ([p for p in args.presets + args.uncached if p not in PRESETS]
               + [m for m in args.models if m not in MODEL_LABELS])
    if unknown:
        parser.error(f"unknown preset or model {unknown[0]!r}; presets: {', '.join(PRESETS)}; models: tiny, sd15, sdxl")
    return args


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    threads = args.threads or torch.get_num_threads()
    print(f"device {args.device}{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}, "
          f"torch {torch.__version__}, {threads} threads, load average {os.getloadavg()[0]:.1f}, {args.size} px, "
          f"batch sizes {args.batch_sizes}, "
          f"presets {', '.join(args.presets)}; uncached {', '.join(args.uncached)}", flush=True)
    best = measure_all(args)
    print_table(best)
    print_checks(best, args)
    print(f"\nthe run took {(time.perf_counter() - started) / 60:.1f} min; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
