"""`python -m ti info FILE [--json]`: what an embedding or hypernetwork file holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ti.formats import EMBEDDING_SUFFIXES, HypernetworkNotEmbedding, describe_embedding, load_embedding_file

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
    "usable_with_model": "usable",
    "model_fit": "why",
}


def register(subparsers) -> None:
    from ti.cli import add_model_flags, add_unused_common_flags

    parser = subparsers.add_parser("info", help="show what an embedding or hypernetwork file holds")
    parser.add_argument("file", type=Path, help=".pt, .bin, .safetensors, .png or .webp; or a bare name, looked up "
                        "in --embeddings-dir, then --hypernetwork-dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    # --model: also say whether the file works with it; the folders: where a bare name is looked up.
    add_model_flags(parser)
    add_unused_common_flags(parser, {"seed": "info only reads files; nothing in it is random"})
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


def resolve_file(file: Path, embeddings_dir: Path, hypernetwork_dir: Path | None) -> Path:
    """FILE as given when it exists; a bare name as <embeddings dir>/NAME.<suffix>, then
    <hypernetwork dir>/NAME.pt (when given), as prompts and <hypernet:NAME> tags find them."""
    if file.exists() or file.parent != Path(".") or file.suffix.lower() in EMBEDDING_SUFFIXES:
        return file
    candidates = [embeddings_dir / f"{file.name}{suffix}" for suffix in EMBEDDING_SUFFIXES]
    if hypernetwork_dir is not None:
        candidates.append(hypernetwork_dir / f"{file.name}.pt")
    return next((path for path in candidates if path.is_file()), file)


def fit_with_model(description: dict, model) -> dict:
    """Whether the described file works with the loaded model, and why not."""
    if description["type"] == "hypernetwork":
        from ti.hypernetwork import attention_widths

        widths = set(attention_widths(model.pipe.unet))
        firing = [width for width in description["dims"] if width in widths]
        reason = (f"fires at widths {', '.join(map(str, firing))}" if firing else
                  f"none of its widths ({', '.join(map(str, description['dims']))}) is one of the model's "
                  f"attention widths ({', '.join(map(str, sorted(widths)))}): it would change nothing")
        return {"model": model.name, "usable": bool(firing), "reason": reason}
    if description["dim"] == model.text_width:
        return {"model": model.name, "usable": True, "reason": f"{description['dim']} wide, as the model needs"}
    return {"model": model.name, "usable": False,
            "reason": f"{description['dim']} wide; this model needs {model.text_width}"}


def run(args: argparse.Namespace) -> int:
    path = resolve_file(args.file, Path(args.embeddings_dir), Path(args.hypernetwork_dir))
    description = describe_file(path)
    if args.model:
        from ti.config import ModelConfig
        from ti.pipeline import load_model

        model = load_model(ModelConfig(model=args.model, model_config=args.model_config, device=args.device,
                                       precision="full" if args.no_half else args.precision))
        fit = fit_with_model(description, model)
        description = {**description, "usable_with_model": fit["usable"], "model": fit["model"],
                       "model_fit": fit["reason"]}
    print(json.dumps(description) if args.json else format_description(description))
    return 0
