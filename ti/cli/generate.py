"""`python -m ti generate PROMPT …`: txt2img from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ti.cli import parse_size
from ti.errors import ConfigError


def register(subparsers) -> None:
    from ti.cli import add_model_flags

    parser = subparsers.add_parser("generate", help="txt2img with the embeddings in --embeddings-dir")
    parser.add_argument("prompt")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--schedule-type", default="Automatic", choices=["Automatic", "Uniform", "Karras", "Exponential"],
                        help="A1111's: Automatic = the sampler's choice (Karras for DPM++ 2M, DPM++ SDE, DPM2, DPM2 a; "
                             "exponential for DPM++ 2M SDE)")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=-1)
    parser.add_argument("--clip-skip", type=int, default=1, help="A1111's Clip skip: 1 = the last CLIP layer, 2 = the penultimate (anime models); ignored on SD 2.x")
    parser.add_argument("--size", default="512x512", help="WxH")
    parser.add_argument("--batch-count", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--out", default=None, help="PNG file to write (one image); default: outputs/txt2img-images/<date>/")
    parser.add_argument("--outputs-dir", default="outputs")
    parser.add_argument("--hypernetwork", default=None,
                        help="a hypernetwork added to the prompt (or write <hypernet:name:strength> in it)")
    add_model_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ti.config import GenerateConfig, ModelConfig
    from ti.generate import save_generated, save_png_with_infotext, txt2img, with_default_hypernetwork
    from ti.hypernetwork import HypernetworkLibrary
    from ti.library import EmbeddingLibrary
    from ti.pipeline import default_model_source, load_model

    width, height = parse_size(args.size)
    config = GenerateConfig(prompt=with_default_hypernetwork(args.prompt, args.hypernetwork), negative_prompt=args.negative, steps=args.steps, sampler=args.sampler,
                            cfg_scale=args.cfg, seed=args.seed, width=width, height=height,
                            batch_count=args.batch_count, batch_size=args.batch_size, clip_skip=args.clip_skip,
                            schedule_type=args.schedule_type)
    if args.out and config.batch_count * config.batch_size != 1:
        raise ConfigError("--out", "names one file; use --outputs-dir for several images")
    from ti.samplers import sampler_names

    if config.sampler.strip() not in sampler_names():  # refused before the model loads
        raise ConfigError("--sampler", f"unknown sampler {config.sampler!r}; choose one of: {', '.join(sampler_names())}")
    precision = "full" if args.no_half else args.precision
    model = load_model(ModelConfig(model=args.model or default_model_source(Path("models/Stable-diffusion")),
                                   model_config=args.model_config, device=args.device, precision=precision))
    if model.is_demo:
        print("note: generating with the demo model (random weights: noise pictures); put a checkpoint in "
              "models/Stable-diffusion/ or use --model", file=sys.stderr)
    library = EmbeddingLibrary(Path(args.embeddings_dir), expected_width=model.text_width)
    snapshot = library.refresh()
    for skipped in snapshot.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}")
    from ti.cli.progress import ProgressBar

    with ProgressBar("generating") as bar:
        result = txt2img(model, snapshot.embeddings, config, on_progress=bar.update,
                         hypernetworks=HypernetworkLibrary(Path(args.hypernetwork_dir)))
    for note in result.notes:
        print(f"note: {note}")
    if args.out:
        paths = [save_png_with_infotext(result.images[0].image, result.images[0].infotext, Path(args.out))]
    else:
        paths = save_generated(result, Path(args.outputs_dir))
    if result.used_embeddings:
        print("used embeddings: " + ", ".join(result.used_embeddings))
    for path, generated in zip(paths, result.images):
        print(f"{path}")
    print(result.images[0].infotext)
    return 0
