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

from ti.config import PRECISIONS
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


# design.md §5's common flags, by argparse dest: (flag, argparse options). Every command takes all
# of them, so one set of flags can be passed to any command (a wrapper script, a Makefile); where a
# command has no use for one, add_unused_common_flags adds it with the reason, and main() says so
# when it is given.
COMMON_FLAGS = {
    "model": ("--model", dict(default=None, help="diffusers folder, .safetensors/.ckpt file, hub id, or 'demo'")),
    "model_config": ("--model-config", dict(default=None, help="local diffusers folder with configs for a "
                                                               "single-file checkpoint")),
    "embeddings_dir": ("--embeddings-dir", dict(default="embeddings", help="folder of embeddings (default: embeddings)")),
    "hypernetwork_dir": ("--hypernetwork-dir", dict(default="models/hypernetworks", help="folder of hypernetworks")),
    "device": ("--device", dict(default=None, help="cuda, cuda:1, cpu (default: cuda when present)")),
    "precision": ("--precision", dict(choices=PRECISIONS, default=None, help="weights precision")),
    "no_half": ("--no-half", dict(action="store_true", help="same as --precision full")),
    "seed": ("--seed", dict(type=int, default=None, help="seed (default random)")),
}
COMMON_FLAG_DESTS = tuple(COMMON_FLAGS)


def add_common_flag(container, dest: str, **overrides) -> None:
    """One of COMMON_FLAGS on a parser or argument group, its options overridden (a help that says
    what it does for this command)."""
    flag, options = COMMON_FLAGS[dest]
    container.add_argument(flag, **{**options, **overrides})


def add_model_flags(parser: argparse.ArgumentParser, unused: dict[str, str] | None = None,
                    helps: dict[str, str] | None = None) -> None:
    """The common flags of every command that loads a model (all but --seed); `unused` ({dest: why}):
    the folders this command has no use for (add_unused_common_flags adds those); `helps`: what a
    flag does for this command, where that is more than its usual help says."""
    for dest in COMMON_FLAGS:
        if dest != "seed" and dest not in (unused or {}):
            add_common_flag(parser, dest, **({"help": helps[dest]} if dest in (helps or {}) else {}))


def add_unused_common_flags(parser: argparse.ArgumentParser, unused: dict[str, str]) -> None:
    """The common flags this command has no use for ({dest: why}), accepted so every command takes
    the same common flags; main() prints a one-line note when one of them is given."""
    for dest, reason in unused.items():
        add_common_flag(parser, dest, default=None, help=f"no effect: {reason}")
    parser.set_defaults(unused_common_flags=dict(unused))


def unused_flag_notes(args: argparse.Namespace) -> list[str]:
    """'note: …' lines for the common flags given to a command that does not use them."""
    notes = []
    for dest, reason in getattr(args, "unused_common_flags", {}).items():
        if getattr(args, dest, None) not in (None, False):
            flag = COMMON_FLAGS[dest][0]
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
