"""`python -m ti convert IN OUT [--overwrite]`: between .pt .bin .safetensors .png .webp, by extension.

diffusers' SDXL textual-inversion script writes two files, `learned_embeds.safetensors` (the
first text encoder, 768 wide) and `learned_embeds_2.safetensors` (the second, 1280 wide), that no
other tool reads as a pair (diffusers#7511): given the first, convert joins its `_2` sibling into
one SDXL embedding {clip_l, clip_g} that A1111, ComfyUI, kohya and we load.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ti.embedding import SDXL_G_WIDTH, SDXL_L_WIDTH, Embedding
from ti.errors import ConfigError
from ti.formats import EMBEDDING_SUFFIXES, load_embedding_file, save_embedding_file


def register(subparsers) -> None:
    from ti.cli import add_model_flags, add_unused_common_flags

    parser = subparsers.add_parser("convert", help="convert an embedding between .pt .bin .safetensors .png .webp")
    parser.add_argument("input", type=Path, metavar="IN", help="embedding file to read, or a bare name looked up in "
                        "--embeddings-dir")
    parser.add_argument("output", type=Path, metavar="OUT", help="file to write; its extension picks the format")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    unused = {"hypernetwork_dir": "convert reads and writes embeddings, not hypernetworks",
              "seed": "converting is exact; nothing in it is random"}
    add_model_flags(parser, unused, helps={
        "model": "refuse to write a file that does not fit this model (diffusers folder, .safetensors/.ckpt file, "
                 "or 'demo')",
        "embeddings_dir": "where a bare IN name is looked up (default: embeddings)"})
    add_unused_common_flags(parser, unused)
    parser.set_defaults(func=run)


def sdxl_sibling(source: Path) -> Path | None:
    """diffusers' second-encoder file beside `source`: <stem>_2<suffix>, when it exists."""
    sibling = source.with_name(f"{source.stem}_2{source.suffix}")
    return sibling if sibling.is_file() else None


def join_diffusers_sdxl_pair(source: Path, first: Embedding) -> tuple[Embedding, Path | None]:
    """(the SDXL embedding of a diffusers pair, the _2 file joined): first is the 768-wide file,
    its _2 sibling the 1280-wide one; (first, None) when it is no such pair.

    Raises:
        ConfigError: a _2 sibling that does not fit (another width or another vector count).
    """
    sibling = sdxl_sibling(source)
    if first.is_sdxl or first.dim != SDXL_L_WIDTH or sibling is None:
        return first, None
    second = load_embedding_file(sibling)
    if second.dim != SDXL_G_WIDTH or second.num_vectors != first.num_vectors:
        raise ConfigError("IN", f"{sibling} is {second.num_vectors} x {second.dim}; the second half of an SDXL "
                                f"pair must be {first.num_vectors} x {SDXL_G_WIDTH}")
    joined = dataclasses.replace(first, vectors=torch.cat([first.vectors, second.vectors], dim=1), is_sdxl=True)
    return joined, sibling


def convert_embedding_file(source: Path, target: Path, overwrite: bool = False,
                           model=None) -> tuple[Path, Path | None]:
    """Read `source` and write it as the kind `target`'s extension names; returns (the file
    written, the diffusers _2 file joined into it or None).

    The written embedding is named after `target`'s stem: A1111 names .pt/.bin/.safetensors
    embeddings by their file stem and image embeddings by their stored name, so this keeps
    the name the same whichever kind is read back.

    model: a LoadedModel the embedding must fit (its width), or None.

    Raises:
        ConfigError: bad OUT (unknown extension, exists without overwrite, same file as IN); an IN
            that does not fit `model`.
        BadEmbeddingFile, UnsafeFile: IN cannot be read.
    """
    source, target = Path(source), Path(target)
    if target.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise ConfigError("OUT", f"{target}: unknown extension {target.suffix or '(none)'!r}; use one of {' '.join(EMBEDDING_SUFFIXES)}")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ConfigError("OUT", f"{target} is the input file itself")
    if target.exists() and not overwrite:
        raise ConfigError("OUT", f"{target} exists; pass --overwrite to replace it")
    embedding, joined = join_diffusers_sdxl_pair(source, load_embedding_file(source))
    if model is not None and embedding.dim != model.text_width:
        raise ConfigError("IN", f"{source} is {embedding.dim} wide ({embedding.model_family}); {model.name} takes "
                                f"{model.text_width}-wide embeddings ({model.family}), so it would not work there")
    renamed = dataclasses.replace(embedding, name=target.stem)
    return save_embedding_file(renamed, target), joined


def run(args: argparse.Namespace) -> int:
    from ti.cli.info import resolve_file

    source = resolve_file(args.input, Path(args.embeddings_dir), hypernetwork_dir=None)
    model = None
    if args.model:
        from ti.config import ModelConfig
        from ti.pipeline import load_model

        model = load_model(ModelConfig(model=args.model, model_config=args.model_config, device=args.device,
                                       precision="full" if args.no_half else args.precision))
    written, joined = convert_embedding_file(source, args.output, overwrite=args.overwrite, model=model)
    embedding = load_embedding_file(written)  # read back: what was written is what users get
    note = f", joined with {joined}" if joined is not None else ""
    fits = f"; fits {model.name}" if model is not None else ""
    print(f"wrote {written} ({embedding.format}, {embedding.num_vectors} x {embedding.dim}, {embedding.model_family}"
          f"{note}{fits})")
    return 0
