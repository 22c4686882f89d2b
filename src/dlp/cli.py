"""The `dlp` command: train | eval | demo | prepare | convert-official | export-official | presets."""

from __future__ import annotations

import argparse
import importlib
import sys

from dlp import __version__

# Each module contributes its sub-command(s) through `configure_parser(subparsers)`.
COMMAND_MODULES = (
    "dlp.engine.cli",
    "dlp.evaluation.runner",
    "dlp.data.prepare",
    "dlp.presets_cli",
    "dlp.compat.cli",
    "dlp.demo.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlp", description="Deep Latent Particles: train, evaluate, explore.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).configure_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except ValueError as exc:  # our user-facing errors are ValueError subclasses with one explanatory sentence
        print(f"dlp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)
