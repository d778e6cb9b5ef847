"""What `train-embedding` and `train-hypernetwork` share: the training flags, flags -> config,
Ctrl-C handling and the run with its progress bar. (Not a subcommand itself.)

Ctrl-C asks the run to stop at the next step boundary; it saves and prints how to continue.
A second Ctrl-C stops at once (the steps done are still saved).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
from pathlib import Path
from typing import Callable


def add_training_flags(parser: argparse.ArgumentParser, lr_default: str, template_default: str,
                       what: str = "embedding", unload_help: str = "keep the VAE on the CPU while training") -> None:
    """The options of a training run (TrainConfig's), with the defaults of the thing trained."""
    parser.add_argument("--data", required=True, help="folder of training images (captions in <image>.txt)")
    parser.add_argument("--log-dir", default="textual_inversion", help="run outputs go to LOG_DIR/<date>/NAME/")
    parser.add_argument("--template", default=template_default, help="a file name in --templates-dir, or a path")
    parser.add_argument("--templates-dir", default="textual_inversion_templates")
    parser.add_argument("--lr", default=lr_default, help=f'learning rate schedule: "{lr_default}" or "{lr_default}:100, 1e-3:1000, 1e-5"')
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=100000, help="max optimizer steps (counting those done before)")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--no-resize", action="store_true", help="train on each image's own size (rounded to 64)")
    parser.add_argument("--save-every", type=int, default=500, help=f"save a copy of the {what} every N steps (0: never)")
    parser.add_argument("--preview-every", type=int, default=500, help="preview image every N steps (0: never)")
    parser.add_argument("--preview-prompt", default="", help="default: the latest batch's first prompt")
    parser.add_argument("--preview-negative", default="")
    parser.add_argument("--preview-sampler", default="Euler a")
    parser.add_argument("--preview-steps", type=int, default=20)
    parser.add_argument("--preview-cfg", type=float, default=7.0)
    parser.add_argument("--preview-seed", type=int, default=-1)
    parser.add_argument("--preview-size", default=None, help="WxH (default: the training size)")
    parser.add_argument("--no-png-embedding", action="store_true",
                        help="no image embeddings beside previews" if what == "embedding" else
                        "no effect: a hypernetwork has no image form (accepted like train-embedding's)")
    parser.add_argument("--clip-grad", choices=["none", "value", "norm"], default="none")
    parser.add_argument("--clip-value", default="0.1", help="gradient clip value (a schedule, like --lr)")
    parser.add_argument("--shuffle-tags", action="store_true")
    parser.add_argument("--tag-dropout", type=float, default=0.0)
    parser.add_argument("--latent-sampling", choices=["once", "deterministic", "random"], default="once")
    parser.add_argument("--alpha-weight", action="store_true", help="PNG alpha as loss weight")
    parser.add_argument("--flip", action="store_true", help="also train on mirrored copies")
    parser.add_argument("--filewords-regex", default="", help="words kept from file names for [filewords]")
    parser.add_argument("--filewords-join", default=" ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-skip", type=int, default=1, help="A1111's Clip skip: 1 = the last CLIP layer, 2 = the penultimate (anime models); ignored on SD 2.x")
    parser.add_argument("--unload-vae", action="store_true", help=unload_help)
    speed = parser.add_argument_group("speed and memory (benchmarks/train_speed.py measures them)")
    speed.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                       help="frozen UNet/VAE/text encoder precision: auto = --precision's (float32 on a CPU, fp16 on "
                            "CUDA); bf16 is about 2x faster on CPUs with avx512_bf16/AMX; the trained tensors stay float32")
    speed.add_argument("--gradient-checkpointing", action="store_true", help="less memory, about a third slower")
    speed.add_argument("--channels-last", action="store_true", help="UNet convolutions in channels-last layout")
    speed.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow start; for long runs)")


def config_from_args(args: argparse.Namespace, config_class=None):
    """A TrainConfig (or config_class, e.g. HypernetworkTrainConfig) from the parsed flags.

    Raises:
        ConfigError: naming the field.
    """
    from ti.cli import parse_size
    from ti.train import TrainConfig

    config_class = config_class or TrainConfig
    preview_width, preview_height = parse_size(args.preview_size) if args.preview_size else (0, 0)
    return config_class(
        name=args.name, data_dir=Path(args.data), learning_rate=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, clip_grad=args.clip_grad, clip_value=args.clip_value, log_dir=args.log_dir,
        template=args.template, templates_dir=args.templates_dir, width=args.width, height=args.height,
        no_resize=args.no_resize, max_steps=args.steps, save_every=args.save_every, preview_every=args.preview_every,
        png_embedding=not args.no_png_embedding and config_class.png_embedding, preview_prompt=args.preview_prompt,
        preview_negative_prompt=args.preview_negative, preview_sampler=args.preview_sampler,
        preview_steps=args.preview_steps, preview_cfg=args.preview_cfg, preview_seed=args.preview_seed,
        preview_width=preview_width, preview_height=preview_height, shuffle_tags=args.shuffle_tags,
        tag_dropout=args.tag_dropout, latent_sampling=args.latent_sampling, alpha_weight=args.alpha_weight,
        flip=args.flip, filewords_regex=args.filewords_regex, filewords_join=args.filewords_join, seed=args.seed,
        clip_skip=args.clip_skip, embeddings_dir=getattr(args, "embeddings_dir", "") or "", unload_vae=args.unload_vae, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, channels_last=args.channels_last, compile_unet=args.compile,
        **({"train_encoders": args.train_encoders} if getattr(args, "train_encoders", None) else {}),
    )


class StopOnCtrlC:
    """While installed: the first SIGINT asks for a stop at the next step boundary, the second
    raises KeyboardInterrupt (the loop still saves the steps done). Restores the old handler."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopOnCtrlC":
        self._previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)…", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> bool:
        signal.signal(signal.SIGINT, self._previous)
        return False


# --mixed-precision as a load precision: the CLI loads the weights so, rather than copying them.
_LOAD_PRECISION = {"no": "full", "bf16": "bf16", "fp16": "half"}


def run_training_command(args: argparse.Namespace, config, train: Callable, folder: Path) -> int:
    """Load the model, run train(model, config, folder, hooks) with a progress bar, print the result.

    Under `accelerate launch` with several processes, each process loads the model on its own
    device and trains its share (ti/train/parallel.py); only the main one prints and writes.

    Returns:
        the exit status: 1 when the run stopped on a NaN, else 0.
    """
    from ti.config import ModelConfig
    from ti.pipeline import default_model_source, load_model
    from ti.train.parallel import data_parallel_from_environment, launcher_mixed_precision

    parallel = data_parallel_from_environment(args.device)
    if config.mixed_precision == "auto" and launcher_mixed_precision():
        config = dataclasses.replace(config, mixed_precision=launcher_mixed_precision())
    precision = "full" if args.no_half else args.precision
    if precision is None and config.mixed_precision != "auto":
        precision = _LOAD_PRECISION[config.mixed_precision]
    device = args.device or (str(parallel.device) if parallel.is_distributed else None)
    model = load_model(ModelConfig(model=args.model or default_model_source(Path("models/Stable-diffusion")),
                                   model_config=args.model_config, device=device, precision=precision))
    if not parallel.is_main:
        with StopOnCtrlC():  # the main process decides when to stop; all stop at the same step
            result = train(model, config, folder, None, parallel)
        return 1 if result.stop_reason == "nan" else 0
    return _train_with_progress(model, config, train, folder, parallel)


def _train_with_progress(model, config, train: Callable, folder: Path, parallel) -> int:
    from ti.cli.progress import ProgressBar
    from ti.train import TrainHooks

    if parallel.is_distributed:
        print(f"training on {parallel.num_processes} processes ({model.device} here); batch size "
              f"{config.batch_size} each", file=sys.stderr)
    if model.is_demo:
        print("note: training on the demo model (random weights); use --model for a real checkpoint", file=sys.stderr)
    with StopOnCtrlC() as stop, ProgressBar(f"training {config.name}") as bar:
        steps_seen = []

        def show_progress(progress) -> None:
            steps_seen.append(progress.step)
            bar.update(progress.step, progress.max_steps, loss=f"{progress.loss:.4f}", lr=f"{progress.learning_rate:g}")

        def show_status(text: str) -> None:
            if steps_seen:  # once the bar is drawn, lines in between would break it
                return
            if not sys.stderr.isatty():
                print(text, file=sys.stderr, flush=True)
                return
            # On a terminal, "encoded 3/40: …" lines overwrite each other; the others stay.
            print(f"\r\033[K{text}", end="" if text.startswith("encoded ") else "\n", file=sys.stderr, flush=True)

        hooks = TrainHooks(on_progress=show_progress, should_stop=lambda: stop.requested, on_status=show_status)
        result = train(model, config, folder, hooks, parallel)
    for skipped in result.skipped_images:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.message)
    if result.log_dir:
        print(f"log folder: {result.log_dir}")
    if result.stop_reason == "interrupted" and Path(sys.argv[0]).name == "__main__.py":
        print("to continue: python -m ti " + shlex.join(sys.argv[1:]))
    return 1 if result.stop_reason == "nan" else 0
