"""`python -m ti …`: the command line over the same functions the UI calls.

Each subcommand lives in its own module under ti/cli/ and exposes
    register(subparsers) -> None   # adds its parser; sets `func=run` via set_defaults
    run(args) -> int               # does the work; raises TIError for user errors
Errors: one line on stderr naming the file/value and the problem, exit status 2, no traceback
(unless --debug).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ti.errors import ConfigError, TIError

# Module names under ti/cli/, in the order they appear in --help.
SUBCOMMAND_MODULES = [
    "info",
    "create",
    "convert",
    "preprocess",
    "train_embedding",
    "hypernetwork",
    "generate",
]


def parse_size(text: str, allow_square: bool = False) -> tuple[int, int]:
    """'512x768' -> (512, 768); with allow_square, '512' -> (512, 512).

    Raises:
        ConfigError("size"): anything else.
    """
    width, sep, height = text.strip().lower().partition("x")
    if not sep and allow_square:
        height = width
    elif not sep:
        width = ""
    if not width.isdigit() or not height.isdigit():
        raise ConfigError("size", f"expected WxH such as 512x512, got {text!r}")
    return int(width), int(height)


def add_model_flags(parser: argparse.ArgumentParser, unused: dict[str, str] | None = None) -> None:
    """Flags shared by every command that loads a model; `unused` ({dest: why}): the folders this
    command has no use for (add_unused_common_flags adds those)."""
    unused = unused or {}
    parser.add_argument("--model", default=None, help="diffusers folder, .safetensors/.ckpt file, hub id, or 'demo'")
    parser.add_argument("--model-config", default=None, help="local diffusers folder with configs for a single-file checkpoint")
    if "embeddings_dir" not in unused:
        parser.add_argument("--embeddings-dir", default="embeddings", help="folder of embeddings (default: embeddings)")
    if "hypernetwork_dir" not in unused:
        parser.add_argument("--hypernetwork-dir", default="models/hypernetworks", help="folder of hypernetworks")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when present)")
    parser.add_argument("--precision", choices=["full", "half", "bf16"], default=None, help="weights precision")
    parser.add_argument("--no-half", action="store_true", help="same as --precision full")


# design.md §5's common flags, by argparse dest. Every command takes all of them, so one set of
# flags can be passed to any command (a wrapper script, a Makefile); where a command has no use for
# one, add_unused_common_flags adds it with the reason, and main() says so when it is given.
COMMON_FLAG_DESTS = ("model", "model_config", "embeddings_dir", "hypernetwork_dir", "device", "precision", "no_half",
                     "seed")
_COMMON_FLAG_SPECS = {
    "model": ("--model", {}), "model_config": ("--model-config", {}), "embeddings_dir": ("--embeddings-dir", {}),
    "hypernetwork_dir": ("--hypernetwork-dir", {}), "device": ("--device", {}),
    "precision": ("--precision", {"choices": ["full", "half", "bf16"]}),
    "no_half": ("--no-half", {"action": "store_true"}), "seed": ("--seed", {"type": int}),
}


def add_unused_common_flags(parser: argparse.ArgumentParser, unused: dict[str, str]) -> None:
    """The common flags this command has no use for ({dest: why}), accepted so every command takes
    the same common flags; main() prints a one-line note when one of them is given."""
    for dest, reason in unused.items():
        flag, extra = _COMMON_FLAG_SPECS[dest]
        parser.add_argument(flag, dest=dest, default=None, help=f"no effect: {reason}", **extra)
    parser.set_defaults(unused_common_flags=dict(unused))


def unused_flag_notes(args: argparse.Namespace) -> list[str]:
    """'note: …' lines for the common flags given to a command that does not use them."""
    notes = []
    for dest, reason in getattr(args, "unused_common_flags", {}).items():
        if getattr(args, dest, None) not in (None, False):
            flag = _COMMON_FLAG_SPECS[dest][0]
            notes.append(f"note: {args.command}: {flag} has no effect ({reason})")
    return notes


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (the usage block stays in --help), status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m ti", description="ti-studio: textual inversion and hypernetworks")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(f"ti.cli.{module_name}").register(subparsers)
    return parser


def quiet_libraries() -> None:
    """Keep library chatter (deprecations, optional-backend notices) out of our one-line errors."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="diffusers")
    for name in ("transformers", "diffusers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def printable_console() -> None:
    """File names that are not UTF-8 (lone surrogates in str) print as escapes instead of raising
    UnicodeEncodeError halfway through a command's output."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):  # replaced by a test harness, or already closed
            pass


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    quiet_libraries()
    printable_console()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    for note in unused_flag_notes(args):
        print(note, file=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except TIError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system said no (disk full, permission, missing folder): one line too
        if args.debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
