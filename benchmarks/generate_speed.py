"""Generation overhead: our txt2img (prompt hook, embeddings, hypernetworks) vs the plain diffusers pipeline.

    python benchmarks/generate_speed.py            # tiny model at 64 px and SD1.5-shaped at 256 px
    python benchmarks/generate_speed.py --quick    # tiny model only

Each configuration runs the same sampler, steps, CFG, size and seed; rounds alternate between the
ways so load on the machine hits them alike; the table shows medians and ratios to plain diffusers.
Random weights: the pictures are noise, the arithmetic is the real one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ti.cli import quiet_libraries  # noqa: E402
from ti.config import GenerateConfig  # noqa: E402
from ti.embedding import Embedding  # noqa: E402
from ti.generate import txt2img  # noqa: E402
from ti.hypernetwork import HypernetworkLibrary, create_hypernetwork  # noqa: E402
from ti.pipeline import LoadedModel  # noqa: E402

PROMPT = "a photo of a tree by a river, detailed"


def plain_diffusers(model: LoadedModel, size: int, steps: int, seed: int):
    generator = torch.Generator("cpu").manual_seed(seed)
    return model.pipe(prompt=PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=7.0,
                      height=size, width=size, generator=generator).images[0]


def ours(model: LoadedModel, size: int, steps: int, seed: int, embeddings: dict, prompt: str,
         library: HypernetworkLibrary | None):
    config = GenerateConfig(prompt=prompt, steps=steps, width=size, height=size, seed=seed, cfg_scale=7.0)
    return txt2img(model, embeddings, config, hypernetworks=library).images[0].image


def bench(label: str, model: LoadedModel, size: int, steps: int, rounds: int) -> list[dict]:
    model.pipe.set_progress_bar_config(disable=True)
    width = model.text_width
    embeddings = {"benchemb": Embedding(name="benchemb", vectors=torch.randn(4, width) * 0.01, sha256="0" * 64)}
    folder = Path(tempfile.mkdtemp(prefix="ti-gen-bench-"))
    unet_widths = sorted({m.to_k.in_features for m in model.pipe.unet.modules() if hasattr(m, "to_k")})
    create_hypernetwork("benchhn", folder, sizes=tuple(unet_widths), seed=0)
    library = HypernetworkLibrary(folder)
    ways = {
        "plain diffusers": lambda: plain_diffusers(model, size, steps, 1),
        "ours, no embedding": lambda: ours(model, size, steps, 1, {}, PROMPT, None),
        "ours, 4-vector embedding": lambda: ours(model, size, steps, 1, embeddings, PROMPT + " benchemb", None),
        "ours, embedding + hypernetwork": lambda: ours(model, size, steps, 1, embeddings,
                                                      PROMPT + " benchemb <hypernet:benchhn:1>", library),
    }
    for run in ways.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain diffusers"])
    return [{"model": label, "way": name, "seconds": statistics.median(t), "ratio": statistics.median(t) / base}
            for name, t in times.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    quiet_libraries()
    torch.manual_seed(0)
    from train_speed import build_sd15_shaped, build_tiny

    cpu = torch.device("cpu")
    rows = bench("tiny, 64 px", build_tiny(cpu, torch.float32), 64, args.steps, args.rounds)
    if not args.quick:
        rows += bench("SD1.5-shaped, 256 px", build_sd15_shaped(cpu, torch.float32), 256, args.steps, max(2, args.rounds // 2))
    print(f"\n{args.steps} Euler a steps, CFG 7, batch 1, float32 on {torch.get_num_threads()} CPU threads; medians")
    print(f"{'model':<22} {'way':<32} {'seconds':>9} {'vs plain':>9}")
    for row in rows:
        print(f"{row['model']:<22} {row['way']:<32} {row['seconds']:>9.3f} {row['ratio']:>8.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
