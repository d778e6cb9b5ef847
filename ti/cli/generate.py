"""`python -m ti generate PROMPT …`: txt2img from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ti.cli import parse_size
from ti.errors import ConfigError


def register(subparsers) -> None:
    from ti.cli import add_model_flags

    parser = subparsers.add_parser("generate", help="txt2img with the embeddings in --embeddings-dir")
    parser.add_argument("prompt", nargs="?", default=None, help="the prompt (may come from --infotext instead)")
    parser.add_argument("--infotext", default=None, metavar="FILE",
                        help="take prompt, negative prompt, steps, sampler, schedule type, CFG scale, seed, size and "
                             "Clip skip from an infotext: a PNG (A1111's or ours) or a text file; flags given override it")
    # Defaults are None so that a flag given wins over --infotext, and --infotext over the default.
    parser.add_argument("--negative", default=None, help="negative prompt")
    parser.add_argument("--steps", type=int, default=None, help="default 20")
    parser.add_argument("--sampler", default=None, help='default "Euler a"')
    parser.add_argument("--schedule-type", default=None, choices=["Automatic", "Uniform", "Karras", "Exponential"],
                        help="A1111's: Automatic (default) = the sampler's choice (Karras for DPM++ 2M, DPM++ SDE, DPM2, "
                             "DPM2 a; exponential for DPM++ 2M SDE)")
    parser.add_argument("--cfg", type=float, default=None, help="default 7")
    parser.add_argument("--seed", type=int, default=None, help="default -1 (random)")
    parser.add_argument("--clip-skip", type=int, default=None, help="A1111's Clip skip: 1 (default) = the last CLIP layer, "
                        "2 = the penultimate (anime models); ignored on SD 2.x")
    parser.add_argument("--size", default=None, help="WxH (default: the model's native size, 512x512 for SD 1.x, "
                        "1024x1024 for SDXL)")
    parser.add_argument("--batch-count", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--out", default=None, help="PNG file to write (one image); default: outputs/txt2img-images/<date>/")
    parser.add_argument("--outputs-dir", default="outputs")
    parser.add_argument("--hypernetwork", default=None,
                        help="a hypernetwork added to the prompt (or write <hypernet:name:strength> in it)")
    add_model_flags(parser)
    parser.set_defaults(func=run)


DEFAULTS = {"negative_prompt": "", "steps": 20, "sampler": "Euler a", "schedule_type": "Automatic", "cfg_scale": 7.0,
            "seed": -1, "clip_skip": 1}  # no size: the model's native one, once it is loaded


def generation_fields(args: argparse.Namespace) -> dict:
    """GenerateConfig fields: each flag given, else the --infotext's value, else A1111's default;
    the size only when a flag or the infotext gave one (run() then uses the model's native size).

    Raises:
        ConfigError: no prompt at all, or an --infotext that cannot be read.
    """
    from ti.infotext import read_generation_parameters
    from ti.samplers import sampler_names

    fields = dict(DEFAULTS)
    if args.infotext:
        pasted = read_generation_parameters(_infotext_from(Path(args.infotext)), sampler_names())
        fields.update(pasted.fields)
        for problem in pasted.problems:
            print(f"note: --infotext: {problem}", file=sys.stderr)
        if pasted.unknown:
            print("note: --infotext: not applied: " + ", ".join(f"{k}: {v}" for k, v in pasted.unknown.items()),
                  file=sys.stderr)
    given = {"prompt": args.prompt, "negative_prompt": args.negative, "steps": args.steps, "sampler": args.sampler,
             "schedule_type": args.schedule_type, "cfg_scale": args.cfg, "seed": args.seed, "clip_skip": args.clip_skip}
    if args.size is not None:
        given["width"], given["height"] = parse_size(args.size)
    fields.update({name: value for name, value in given.items() if value is not None})
    if not fields.get("prompt"):
        raise ConfigError("prompt", "none given: write one, or take it from an image with --infotext FILE")
    return fields


def _infotext_from(path: Path) -> str:
    if not path.is_file():
        raise ConfigError("--infotext", f"{path} is not a file")
    if path.suffix.lower() in (".png", ".webp", ".jpg", ".jpeg"):
        from PIL import Image

        with Image.open(path) as picture:
            text = str(picture.info.get("parameters") or "")
        if not text:
            raise ConfigError("--infotext", f"{path} holds no generation parameters (no 'parameters' text chunk)")
        return text
    return path.read_text(encoding="utf-8", errors="replace")


def run(args: argparse.Namespace) -> int:
    from ti.config import GenerateConfig, ModelConfig
    from ti.generate import save_generated, save_png_with_infotext, txt2img, with_default_hypernetwork
    from ti.hypernetwork import HypernetworkLibrary
    from ti.library import EmbeddingLibrary
    from ti.pipeline import default_model_source, load_model

    fields = generation_fields(args)
    size_given = "width" in fields
    fields["prompt"] = with_default_hypernetwork(fields["prompt"], args.hypernetwork)
    config = GenerateConfig(**fields, batch_count=args.batch_count, batch_size=args.batch_size)
    if args.out and config.batch_count * config.batch_size != 1:
        raise ConfigError("--out", "names one file; use --outputs-dir for several images")
    from ti.samplers import sampler_names

    if config.sampler.strip() not in sampler_names():  # refused before the model loads
        raise ConfigError("--sampler", f"unknown sampler {config.sampler!r}; choose one of: {', '.join(sampler_names())}")
    precision = "full" if args.no_half else args.precision
    model = load_model(ModelConfig(model=args.model or default_model_source(Path("models/Stable-diffusion")),
                                   model_config=args.model_config, device=args.device, precision=precision))
    if not size_given and model.native_size != config.width:
        config = dataclasses.replace(config, width=model.native_size, height=model.native_size)
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
