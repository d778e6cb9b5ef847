"""`python -m ti create-hypernetwork NAME ...` and `python -m ti train-hypernetwork NAME --data DIR ...`.

create-hypernetwork writes a new file in --hypernetwork-dir; its flags and defaults follow A1111's
create form (a1111-compat.md §8). No model is loaded: a fresh hypernetwork records no checkpoint.
train-hypernetwork takes the same training flags as train-embedding (ti/cli/training.py), with
A1111's hypernetwork defaults (--lr 0.00001, --template hypernetwork.txt).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

DEFAULT_SIZES = "768,320,640,1280"


def register(subparsers) -> None:
    """Add the hypernetwork subcommands."""
    register_create(subparsers)
    register_train(subparsers)


def register_create(subparsers) -> None:
    from ti.cli import add_common_flag, add_unused_common_flags

    parser = subparsers.add_parser("create-hypernetwork", help="create a hypernetwork to train")
    parser.add_argument("name", help="file name without .pt (letters, digits, '._- ')")
    parser.add_argument("--sizes", default=None,
                        help=f"context widths to make module pairs for (default: every attention width of --model; "
                             f"without --model {DEFAULT_SIZES}: SD1 text + self-attention; 1024 for SD2 text)")
    parser.add_argument("--layers", default="1,2,1", help="layer structure: width multipliers, starting and ending with 1 (default 1,2,1)")
    parser.add_argument("--activation", default="linear", help="linear, relu, leakyrelu, elu, swish (= Hardswish, as A1111), tanh, sigmoid, or any torch activation lower-cased")
    parser.add_argument("--init", default="Normal", help="weight initialization: Normal, KaimingUniform, KaimingNormal, XavierUniform, XavierNormal")
    parser.add_argument("--layer-norm", action="store_true", help="a LayerNorm after each layer")
    parser.add_argument("--dropout", action="store_true", help="use dropout while training")
    parser.add_argument("--dropout-structure", default=None,
                        help="one dropout probability per layer structure entry, first and last 0 (needs --dropout; default 0,...,0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file of that name")
    parser.add_argument("--hypernetwork-dir", default="models/hypernetworks", help="folder of hypernetworks (default models/hypernetworks)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the initial weights (default random)")
    add_common_flag(parser, "model", help="the model it is for: its attention widths become the default --sizes "
                                          "(diffusers folder, .safetensors/.ckpt file, or 'demo')")
    for dest in ("model_config", "device", "precision", "no_half"):
        add_common_flag(parser, dest)
    add_unused_common_flags(parser, {"embeddings_dir": "a new hypernetwork's weights come from --init and --seed; "
                                                       "no embedding is read"})
    parser.set_defaults(func=run_create)


def _dropout_structure(args: argparse.Namespace, layer_structure: list[float]) -> list[float] | None:
    """A1111's rule: the structure counts only with dropout on; otherwise all zeros."""
    from ti.errors import ConfigError
    from ti.hypernetwork import parse_dropout_structure

    if args.dropout_structure is None:
        return None  # zeros, or A1111's default when --dropout
    if not args.dropout:
        raise ConfigError("--dropout-structure", "is used only with --dropout; add --dropout or leave it out")
    return parse_dropout_structure(args.dropout_structure, layer_structure, "--dropout-structure")


def _model_sizes(args: argparse.Namespace) -> list[int]:
    """Every attention context width of --model (text and self-attention), as the web UI offers."""
    from ti.config import ModelConfig
    from ti.hypernetwork import attention_widths
    from ti.pipeline import load_model

    model = load_model(ModelConfig(model=args.model, model_config=args.model_config, device=args.device,
                                   precision="full" if args.no_half else args.precision))
    return attention_widths(model.pipe.unet)


def run_create(args: argparse.Namespace) -> int:
    from ti.hypernetwork import HypernetworkStructure, create_hypernetwork, parse_number_list, parse_sizes

    layer_structure = parse_number_list(args.layers, "--layers")
    structure = HypernetworkStructure(
        layer_structure=tuple(layer_structure),
        activation=args.activation,
        weight_init=args.init,
        layer_norm=args.layer_norm,
        use_dropout=args.dropout,
        dropout_structure=_dropout_structure(args, layer_structure),
    )
    sizes = parse_sizes(args.sizes) if args.sizes else _model_sizes(args) if args.model else parse_sizes(DEFAULT_SIZES)
    path = create_hypernetwork(args.name, Path(args.hypernetwork_dir), sizes, structure, overwrite=args.overwrite, seed=args.seed)
    layers = ", ".join(f"{value:g}" for value in structure.layer_structure)
    print(f"created {path} (widths {', '.join(map(str, sizes))}; layers {layers}; {structure.activation}; {structure.weight_init})")
    return 0


def register_train(subparsers) -> None:
    from ti.cli import add_model_flags
    from ti.cli.training import add_training_flags

    parser = subparsers.add_parser("train-hypernetwork", help="train a hypernetwork on a folder of images")
    parser.add_argument("name", help="the hypernetwork: <hypernetwork-dir>/NAME.pt, made first with `python -m ti create-hypernetwork`")
    add_training_flags(parser, lr_default="0.00001", template_default="hypernetwork.txt", what="hypernetwork",
                       unload_help="keep the VAE and the text encoder on the CPU while training (prompts are encoded there)")
    add_model_flags(parser)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ti.cli.training import config_from_args, run_training_command
    from ti.errors import ConfigError
    from ti.train import HypernetworkTrainConfig, train_hypernetwork

    config = config_from_args(args, HypernetworkTrainConfig)  # refuse bad options before loading the model
    hypernetwork_dir = Path(args.hypernetwork_dir)
    if not (hypernetwork_dir / f"{config.name}.pt").is_file():
        raise ConfigError("name", f"{hypernetwork_dir / (config.name + '.pt')} does not exist; create it first: "
                                  f"python -m ti create-hypernetwork {shlex.quote(config.name)} --sizes {DEFAULT_SIZES}")
    return run_training_command(args, config, train_hypernetwork, hypernetwork_dir)
