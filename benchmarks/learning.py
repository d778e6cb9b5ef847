"""Does training teach? Textual inversion on the toy world, ours beside diffusers' script.

    python -m benchmarks.learning --peer-script PATH/TO/diffusers/examples/textual_inversion/textual_inversion.py

The world (benchmarks/toyworld, pretrained, committed) draws a zero but has no word for it: its
captions describe it as a "hollow digit". Each run learns an embedding (--vectors vectors,
initialised from "digit") from --pictures pictures of it; at every --eval-every steps the same
--samples seeds are drawn with "a photo of a <embedding>" through our txt2img (Euler a, 20 steps,
CFG 7) and a classifier fitted on the real digits says which share shows the concept. Runs: ours
with A1111's defaults (lr 0.005, batch 1), diffusers' script with its defaults (lr 1e-4, batch 16,
constant), and each with the other's learning rate and batch size, so the same data, steps and
learning rate are compared. Time is seconds from the start of each run (the peer's includes its
own start-up and model load, ours the latent cache) until the step's embedding file existed.
Writes results.json, results.md and plots to --out. Without --peer-script only our runs are made.
--hypernetwork adds benchmarks/toyworld/hypernetwork.py's run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.toyworld.data import GENERIC_WORD
from benchmarks.toyworld.plot import line_chart
from benchmarks.toyworld.runs import (Curve, base_rates, real_concept_share, share_curve, train_ours, world_quality,
                                      write_concept_data)
from benchmarks.toyworld.world import WORLD_DIR, classifier_accuracy, load_world

A1111_SETTINGS = {"learning_rate": 0.005, "batch_size": 1}
PEER_SETTINGS = {"learning_rate": 1e-4, "batch_size": 16}


def init_vector(model, count: int) -> torch.Tensor:
    from ti.create import init_vectors

    weight = model.text_encoder.get_input_embeddings().weight.detach()
    return init_vectors(model.tokenizer, weight, GENERIC_WORD, count)


def peer_curve(args, work: Path, data_dir: Path, label: str, settings: dict) -> tuple[Curve, dict, dict]:
    """The peer's run: (timing, {step: vectors}, {step: seconds when its file existed})."""
    from ti.formats import load_embedding_file

    from benchmarks.toyworld.peer import run_peer

    out = work / label
    out.mkdir(parents=True)
    run = run_peer(args.peer_script, args.peer_python, args.world, data_dir, out, steps=args.steps,
                   save_every=args.eval_every, learning_rate=settings["learning_rate"],
                   batch_size=settings["batch_size"], initializer=GENERIC_WORD, seed=args.seed, threads=args.threads,
                   extra_args=("--num_vectors", str(args.vectors)))
    vectors = {step: load_embedding_file(path).vectors for step, path in run.checkpoints.items()}
    curve = Curve(label, wall_seconds=run.wall_seconds, settings=dict(settings))
    return curve, vectors, run.seconds_at


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=WORLD_DIR)
    parser.add_argument("--peer-script", type=Path, help="diffusers' examples/textual_inversion/textual_inversion.py")
    parser.add_argument("--peer-python", type=Path, default=Path(".peer-venv/bin/python"),
                        help="its venv (benchmarks/setup_peer_venv.sh)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--samples", type=int, default=64, help="pictures generated per evaluation")
    parser.add_argument("--pictures", type=int, default=8, help="training pictures of the concept")
    parser.add_argument("--vectors", type=int, default=2, help="vectors per token (the concept's description "
                                                               "is two words; one vector plateaus, see README)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--runs", default="ours-a1111,peer-defaults,ours-peer-settings,peer-a1111-settings")
    parser.add_argument("--hypernetwork", action="store_true", help="also train a hypernetwork on faint pictures")
    parser.add_argument("--hn-steps", type=int, default=300)
    parser.add_argument("--hn-lr", default="0.0005")
    parser.add_argument("--hn-pictures", type=int, default=36)
    parser.add_argument("--hn-samples", type=int, default=16, help="pictures per named digit per evaluation")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/learning"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if any(r.startswith("peer") for r in runs) and not args.peer_script:
        runs = [r for r in runs if not r.startswith("peer")]
        print("no --peer-script: our runs only", file=sys.stderr)

    model = load_world(args.world)
    eval_seed = 10_000 + args.seed
    report = {"command": "python -m benchmarks.learning " + " ".join(argv if argv is not None else sys.argv[1:]),
              "vectors_per_token": args.vectors,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "samples": args.samples, "pictures": args.pictures, "steps": args.steps,
              "classifier_on_real_concept": real_concept_share(),
              "classifier_held_out": classifier_accuracy(),
              "world_quality": world_quality(model, samples=args.samples, seed=eval_seed),
              "base_rates": base_rates(model, samples=args.samples, seed=eval_seed), "runs": {}}
    print(json.dumps({k: report[k] for k in ("world_quality", "base_rates")}, indent=1), flush=True)
    curves: list[Curve] = []
    with tempfile.TemporaryDirectory(prefix="ti-learning-") as tmp:
        work = Path(tmp)
        data_dir = write_concept_data(work / "data", args.pictures, args.seed)
        for label in runs:
            settings = A1111_SETTINGS if label in ("ours-a1111", "peer-a1111-settings") else PEER_SETTINGS
            started = time.perf_counter()
            if label.startswith("ours"):
                curve, vectors = train_ours(model, work / label, data_dir, steps=args.steps, save_every=args.eval_every,
                                            learning_rate=str(settings["learning_rate"]),
                                            batch_size=settings["batch_size"], seed=args.seed, label=label,
                                            vectors_per_token=args.vectors)
                seconds = dict(zip(sorted(vectors), curve.seconds))
            else:
                curve, vectors, seconds = peer_curve(args, work, data_dir, label, settings)
                vectors[0], seconds[0] = init_vector(model, args.vectors), 0.0  # the start: the initializer's row
            share_curve(model, curve, vectors, samples=args.samples, seed=eval_seed)
            curve.seconds = [seconds.get(step, 0.0) for step in curve.steps]
            curves.append(curve)
            report["runs"][label] = {"settings": curve.settings, "steps": curve.steps, "shares": curve.shares,
                                     "seconds": [round(s, 1) for s in curve.seconds],
                                     "wall_seconds": round(curve.wall_seconds, 1)}
            print(f"{label}: {dict(zip(curve.steps, curve.shares))} in {time.perf_counter() - started:.0f}s", flush=True)
        if args.hypernetwork:
            report["hypernetwork"] = hypernetwork_report(args, model, work, eval_seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    (args.out / "results.md").write_text(markdown_table(report, curves))
    base = next(iter(report["base_rates"].values()))
    line_chart([(c.label, c.steps, c.shares) for c in curves], args.out / "share_vs_steps.png",
               title=f"Share of {args.samples} pictures the classifier reads as the concept", x_label="training step",
               y_label="share", hlines=(("base rate", base), ("target 0.8", 0.8)))
    line_chart([(c.label, c.seconds, c.shares) for c in curves], args.out / "share_vs_seconds.png",
               title="The same against seconds from each run's start", x_label="seconds", y_label="share",
               hlines=(("base rate", base), ("target 0.8", 0.8)))
    if "hypernetwork" in report:
        hn = report["hypernetwork"]
        line_chart([("drawn faint", hn["steps"], [hn["shares"][str(s)]["faint"] for s in hn["steps"]]),
                    ("shows the asked digit", hn["steps"], [hn["shares"][str(s)]["asked_digit"] for s in hn["steps"]])],
                   args.out / "hypernetwork.png", title="Hypernetwork on faint pictures: what the readers see",
                   x_label="training step", y_label="share",
                   hlines=(("faint, no hypernetwork", hn["without"]["faint"]),))
        (args.out / "results.md").write_text(markdown_table(report, curves) + hypernetwork_table(hn))
    print((args.out / "results.md").read_text())
    return 0


def hypernetwork_report(args, model, work: Path, eval_seed: int) -> dict:
    from benchmarks.toyworld.hypernetwork import (hypernetwork_curve, style_shares, train_hypernetwork_run,
                                                  write_faint_data)

    data_dir = write_faint_data(work / "faint", args.hn_pictures, args.seed)
    curve, files = train_hypernetwork_run(model, work / "hn", data_dir, steps=args.hn_steps,
                                          save_every=args.eval_every, learning_rate=args.hn_lr, seed=args.seed)
    shares = hypernetwork_curve(model, curve, files, samples_per_digit=args.hn_samples, seed=eval_seed)
    without = style_shares(model, None, samples_per_digit=args.hn_samples, seed=eval_seed)
    print(f"hypernetwork: {shares} (without: {without}) in {curve.wall_seconds:.0f}s training", flush=True)
    return {"learning_rate": args.hn_lr, "pictures": args.hn_pictures, "samples_per_digit": args.hn_samples,
            "steps": curve.steps, "shares": {str(k): v for k, v in shares.items()}, "without": without,
            "seconds": [round(s, 1) for s in curve.seconds], "wall_seconds": round(curve.wall_seconds, 1)}


def hypernetwork_table(hn: dict) -> str:
    lines = ["", f"Hypernetwork (lr {hn['learning_rate']}, {hn['pictures']} faint pictures, "
                 f"{hn['samples_per_digit']} pictures per named digit per row):", "",
             "| step | drawn faint | shows the asked digit | seconds |", "|---|---|---|---|",
             f"| no hypernetwork | {hn['without']['faint']:.2f} | {hn['without']['asked_digit']:.2f} | |"]
    for step, seconds in zip(hn["steps"], hn["seconds"]):
        shares = hn["shares"][str(step)]
        lines.append(f"| {step} | {shares['faint']:.2f} | {shares['asked_digit']:.2f} | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def markdown_table(report: dict, curves: list[Curve]) -> str:
    steps = sorted({s for c in curves for s in c.steps})
    lines = ["| run | lr | batch | " + " | ".join(f"step {s}" for s in steps) + " | wall s |",
             "|---|---|---|" + "---|" * len(steps) + "---|"]
    for c in curves:
        shares = dict(zip(c.steps, c.shares))
        cells = [f"{shares[s]:.2f}" if s in shares else "" for s in steps]
        lines.append(f"| {c.label} | {c.settings['learning_rate']} | {c.settings['batch_size']} | "
                     + " | ".join(cells) + f" | {c.wall_seconds:.0f} |")
    rates = ", ".join(f"{k}: {v:.2f}" for k, v in report["base_rates"].items())
    quality = ", ".join(f"{k} {v:.2f}" for k, v in report["world_quality"].items())
    return "\n".join(lines) + f"\n\nBase rates (no embedding): {rates}. World: each prompt read as its digit " \
                              f"(the concept's two-word description included): {quality}.\n"


if __name__ == "__main__":
    raise SystemExit(main())
