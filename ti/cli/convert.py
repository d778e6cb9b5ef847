"""`python -m ti convert IN OUT [--overwrite]`: between .pt .bin .safetensors .png .webp, by extension."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ti.errors import ConfigError
from ti.formats import EMBEDDING_SUFFIXES, load_embedding_file, save_embedding_file


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert an embedding between .pt .bin .safetensors .png .webp")
    parser.add_argument("input", type=Path, metavar="IN", help="embedding file to read")
    parser.add_argument("output", type=Path, metavar="OUT", help="file to write; its extension picks the format")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


def convert_embedding_file(source: Path, target: Path, overwrite: bool = False) -> Path:
    """Read `source` and write it as the kind `target`'s extension names.

    The written embedding is named after `target`'s stem: A1111 names .pt/.bin/.safetensors
    embeddings by their file stem and image embeddings by their stored name, so this keeps
    the name the same whichever kind is read back.

    Raises:
        ConfigError: bad OUT (unknown extension, exists without overwrite, same file as IN).
        BadEmbeddingFile, UnsafeFile: IN cannot be read.
    """
    source, target = Path(source), Path(target)
    if target.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise ConfigError("OUT", f"{target}: unknown extension {target.suffix or '(none)'!r}; use one of {' '.join(EMBEDDING_SUFFIXES)}")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ConfigError("OUT", f"{target} is the input file itself")
    if target.exists() and not overwrite:
        raise ConfigError("OUT", f"{target} exists; pass --overwrite to replace it")
    embedding = load_embedding_file(source)
    renamed = dataclasses.replace(embedding, name=target.stem)
    return save_embedding_file(renamed, target)


def run(args: argparse.Namespace) -> int:
    written = convert_embedding_file(args.input, args.output, overwrite=args.overwrite)
    embedding = load_embedding_file(written)  # read back: what was written is what users get
    print(f"wrote {written} ({embedding.format}, {embedding.num_vectors} x {embedding.dim}, {embedding.model_family})")
    return 0
