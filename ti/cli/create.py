"""`python -m ti create NAME --init-text TEXT --vectors N`: a new embedding in --embeddings-dir."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from ti.cli import add_model_flags, add_unused_common_flags

    parser = subparsers.add_parser("create", help="create an embedding to train")
    parser.add_argument("name")
    parser.add_argument("--init-text", default="*", help="text whose token vectors start the embedding ('' = zeros)")
    parser.add_argument("--vectors", type=int, default=1, help="vectors per token, 1-75 (each costs one prompt token)")
    parser.add_argument("--overwrite", action="store_true")
    unused = {"hypernetwork_dir": "creating an embedding reads no hypernetwork",
              "seed": "a new embedding copies its init text's token rows (or is zeros); nothing in it is random"}
    add_model_flags(parser, unused)
    add_unused_common_flags(parser, unused)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ti.config import ModelConfig
    from ti.create import clean_embedding_name, create_embedding
    from ti.errors import ConfigError
    from ti.pipeline import default_model_source, load_model
    from ti.prompt import CHUNK_LENGTH

    clean_embedding_name(args.name)  # refuse a bad name or count before spending time on the model
    if not 1 <= args.vectors <= CHUNK_LENGTH:
        raise ConfigError("--vectors", f"must be between 1 and {CHUNK_LENGTH}, got {args.vectors}")
    precision = "full" if args.no_half else args.precision
    model = load_model(ModelConfig(model=args.model or default_model_source(Path("models/Stable-diffusion")),
                                   model_config=args.model_config, device=args.device, precision=precision))
    path = create_embedding(model, args.name, args.init_text, args.vectors, Path(args.embeddings_dir), args.overwrite)
    print(f"created {path} ({args.vectors} vector(s), {model.text_width} wide, for {model.name} [{model.short_hash}])")
    return 0
