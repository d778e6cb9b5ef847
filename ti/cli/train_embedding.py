"""`python -m ti train-embedding NAME --data DIR …`: train an embedding from the command line.

The flags, Ctrl-C handling and progress are shared with train-hypernetwork (ti/cli/training.py).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ti.cli.training import StopOnCtrlC, add_training_flags, config_from_args, run_training_command
from ti.errors import ConfigError

__all__ = ["StopOnCtrlC", "config_from_args", "register", "run"]


def register(subparsers) -> None:
    from ti.cli import add_model_flags, add_unused_common_flags

    parser = subparsers.add_parser("train-embedding", help="train an embedding (textual inversion) on a folder of images")
    parser.add_argument("name", help="the embedding: <embeddings-dir>/NAME.pt, made first with `python -m ti create`")
    add_training_flags(parser, lr_default="0.005", template_default="style_filewords.txt", what="embedding")
    parser.add_argument("--train-encoders", default="both", metavar="{both,clip_l,clip_g}",
                        help="SDXL: train both halves of the embedding, or only the clip_l (text encoder 1) or "
                             "clip_g (text encoder 2) rows; the other half keeps its start values")
    unused = {"hypernetwork_dir": "embedding training and its previews apply no hypernetwork"}
    add_model_flags(parser, unused)
    add_unused_common_flags(parser, unused)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ti.train import train_embedding

    config = config_from_args(args)  # refuse bad options before spending time on the model
    embeddings_dir = Path(args.embeddings_dir)
    # <name>.pt, or <name>.safetensors for SDXL (the model, not yet loaded, decides which is used)
    if not any((embeddings_dir / f"{config.name}{suffix}").is_file() for suffix in (".pt", ".safetensors")):
        raise ConfigError("name", f"{embeddings_dir / (config.name + '.pt')} does not exist; create it first: "
                                  f"python -m ti create {shlex.quote(config.name)} --init-text '*' --vectors 1")
    return run_training_command(args, config, train_embedding, embeddings_dir)
