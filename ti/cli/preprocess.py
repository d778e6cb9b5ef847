"""`python -m ti preprocess SRC DST …`: turn a folder of raw pictures into a training set.

Exit status: 0 when pictures were written; 1 when none was (every file skipped, or an empty
folder); 2 for a bad option or a missing caption model; 130 when cancelled with Ctrl-C (the
first Ctrl-C stops after the current picture and keeps what was written; a second one stops at
once).
"""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager

from ti.cli import add_common_flag, add_unused_common_flags
from ti.cli import parse_size as parse_wh

_DEFAULTS = dict(size="512x512", split_threshold=0.5, split_overlap=0.2)


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768); '512' -> (512, 512). Raises ConfigError("size")."""
    return parse_wh(text, allow_square=True)


def register(subparsers) -> None:
    """Add the `preprocess` subcommand."""
    from ti.captioning import DEFAULT_CAPTION_MODEL
    from ti.crops import AUTO_CROP_OBJECTIVES
    from ti.preprocess import EXISTING_CAPTION_ACTIONS

    parser = subparsers.add_parser(
        "preprocess",
        help="turn a folder of raw pictures into a training set",
        description="Crop, split, flip and caption the pictures of SRC into DST as {index:05}-{subindex}-{name}.png "
        "(+ .txt captions). With no crop option, pictures are cover-cropped to --size.",
    )
    parser.add_argument("source", metavar="SRC", help="folder of raw pictures (and optional <name>.txt captions)")
    parser.add_argument("destination", metavar="DST", help="output folder (created; not SRC, not inside it)")
    parser.add_argument("--size", default=_DEFAULTS["size"], help="output WxH (default 512x512)")
    parser.add_argument("--existing-caption", choices=EXISTING_CAPTION_ACTIONS, default="ignore",
                        help="what to do with SRC/<name>.txt: ignore, copy, prepend or append to the new caption")
    parser.add_argument("--keep-original-size", action="store_true", help="also save each picture at its own size")
    parser.add_argument("--flip", action="store_true", help="add a mirrored copy of every output")

    split = parser.add_argument_group("split oversized pictures")
    split.add_argument("--split", action="store_true", help="cut long pictures into overlapping tiles")
    split.add_argument("--split-threshold", type=float, default=_DEFAULTS["split_threshold"],
                       help="split when the aspect relative to --size is at most this (0-1, default 0.5)")
    split.add_argument("--split-overlap", type=float, default=_DEFAULTS["split_overlap"],
                       help="fraction of a tile shared with its neighbour (0-0.9, default 0.2)")

    focal = parser.add_argument_group("focal-point crop")
    focal.add_argument("--focal-crop", action="store_true", help="crop around the subject (edges, entropy, faces)")
    focal.add_argument("--focal-face-weight", type=float, default=0.9, help="needs opencv-python (default 0.9)")
    focal.add_argument("--focal-entropy-weight", type=float, default=0.15, help="default 0.15")
    focal.add_argument("--focal-edges-weight", type=float, default=0.5, help="default 0.5")

    auto = parser.add_argument_group("auto-sized crop")
    auto.add_argument("--auto-crop", action="store_true", help="crop to the 64-multiple size that best fits each picture")
    auto.add_argument("--auto-crop-min-size", type=int, default=384, help="smallest side (default 384)")
    auto.add_argument("--auto-crop-max-size", type=int, default=768, help="largest side (default 768)")
    auto.add_argument("--auto-crop-min-area", type=int, default=64 * 64, help="default 4096")
    auto.add_argument("--auto-crop-max-area", type=int, default=640 * 640, help="default 409600")
    auto.add_argument("--auto-crop-objective", choices=AUTO_CROP_OBJECTIVES, default="max-area")
    auto.add_argument("--auto-crop-error-threshold", type=float, default=0.1,
                      help="largest accepted aspect error (0-1, default 0.1); pictures nothing fits are skipped")

    captions = parser.add_argument_group("captions")
    captions.add_argument("--caption", action="store_true", help="caption every output with BLIP")
    captions.add_argument("--caption-model", default=DEFAULT_CAPTION_MODEL,
                          help=f"BLIP folder or hub id (default {DEFAULT_CAPTION_MODEL}; offline: a local folder)")
    captions.add_argument("--caption-in-filename", action="store_true", help="name outputs after their caption")
    captions.add_argument("--device", default=None, help="where BLIP runs: cuda, cpu (default: cuda when present)")
    add_common_flag(captions, "precision", help="BLIP's weights precision (default: half on CUDA, full on the CPU)")
    add_common_flag(captions, "no_half")
    add_unused_common_flags(parser, {
        "model": "captions come from BLIP (--caption-model), not from the Stable Diffusion model",
        "model_config": "no Stable Diffusion model is loaded",
        "embeddings_dir": "preprocessing reads and writes pictures and captions only",
        "hypernetwork_dir": "preprocessing reads and writes pictures and captions only",
        "seed": "nothing in preprocessing is random: the same pictures give the same outputs",
    })
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Preprocess SRC into DST; print a summary and the skipped files.

    Raises:
        ConfigError: a bad option or a missing source folder.
        TIError: the caption model cannot be loaded.
    """
    from ti.cli.progress import ProgressBar
    from ti.preprocess import PreprocessConfig, preprocess_folder

    width, height = parse_size(args.size)
    config = PreprocessConfig(
        source=args.source, destination=args.destination, width=width, height=height,
        existing_caption=args.existing_caption, keep_original_size=args.keep_original_size, flip=args.flip,
        split=args.split, split_threshold=args.split_threshold, split_overlap=args.split_overlap,
        focal_crop=args.focal_crop, focal_face_weight=args.focal_face_weight,
        focal_entropy_weight=args.focal_entropy_weight, focal_edges_weight=args.focal_edges_weight,
        auto_crop=args.auto_crop, auto_crop_min_size=args.auto_crop_min_size, auto_crop_max_size=args.auto_crop_max_size,
        auto_crop_min_area=args.auto_crop_min_area, auto_crop_max_area=args.auto_crop_max_area,
        auto_crop_objective=args.auto_crop_objective, auto_crop_error_threshold=args.auto_crop_error_threshold,
        caption=args.caption, caption_model=args.caption_model, caption_in_filename=args.caption_in_filename,
    )  # fmt: skip
    captioner = None
    if config.caption:
        from ti.captioning import BlipCaptioner

        captioner = BlipCaptioner.from_pretrained(config.caption_model, device=args.device,
                                                  precision="full" if args.no_half else args.precision)
    with _stop_on_first_interrupt() as stop_requested, ProgressBar("preprocessing") as bar:
        result = preprocess_folder(
            config,
            captioner=captioner,
            on_progress=lambda done, total, name: bar.update(done, total, file=name),
            should_stop=stop_requested,
        )
    for skipped in result.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"{config.destination}: {result.summary()}")
    if result.cancelled:
        return 130
    return 0 if result.images else 1


@contextmanager
def _stop_on_first_interrupt():
    """Yield a should_stop callable that turns True after the first Ctrl-C.

    The first SIGINT only sets the flag (the run ends cleanly after the current picture); the
    second raises KeyboardInterrupt as usual. The previous handler is restored on exit.
    """
    state = {"interrupted": False}

    def on_interrupt(signum, frame):
        if state["interrupted"]:
            raise KeyboardInterrupt
        state["interrupted"] = True
        print("\nstopping after the current picture (Ctrl-C again to stop now)", file=sys.stderr)

    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread: signals cannot be caught here, Ctrl-C works as usual
        yield lambda: state["interrupted"]
        return
    try:
        yield lambda: state["interrupted"]
    finally:
        signal.signal(signal.SIGINT, previous)
