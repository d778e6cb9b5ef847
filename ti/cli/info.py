"""`python -m ti info FILE [--json]`: what an embedding or hypernetwork file holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ti.formats import HypernetworkNotEmbedding, describe_embedding, load_embedding_file

# Human-readable labels for the JSON fields, in print order.
_LABELS = {
    "type": "type",
    "name": "name",
    "format": "format",
    "vectors": "vectors",
    "dim": "width",
    "model_family": "model family",
    "step": "step",
    "checkpoint_hash": "checkpoint hash",
    "checkpoint_name": "checkpoint name",
    "sha256": "sha256",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show what an embedding or hypernetwork file holds")
    parser.add_argument("file", type=Path, help=".pt, .bin, .safetensors, .png or .webp")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def describe_hypernetwork_file(path: Path) -> dict:
    """The `info` fields of a hypernetwork file (design.md §5)."""
    from ti.hypernetwork import describe_hypernetwork

    return describe_hypernetwork(path)


def describe_file(path: Path) -> dict:
    """The `info --json` object for any supported file: embedding, or hypernetwork.

    Raises:
        TIError: the file cannot be read (one line naming it and the reason).
    """
    from ti.formats import MAX_EMBEDDING_FILE_BYTES

    # Hypernetworks can be larger than any embedding: try them first when the size says so.
    if path.suffix.lower() == ".pt" and path.is_file() and path.stat().st_size > MAX_EMBEDDING_FILE_BYTES:
        return describe_hypernetwork_file(path)
    try:
        embedding = load_embedding_file(path)
    except HypernetworkNotEmbedding:
        return describe_hypernetwork_file(path)
    return describe_embedding(embedding)


def format_description(description: dict) -> str:
    """`label: value` lines for people; None shows as '-'."""
    lines = []
    for key, value in description.items():
        label = _LABELS.get(key, key.replace("_", " "))
        lines.append(f"{label + ':':<17}{'-' if value is None else value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    description = describe_file(args.file)
    print(json.dumps(description) if args.json else format_description(description))
    return 0
