"""The `dlp` command. Each sub-command lives in its own CLI module, imported only when that command runs, so that
`dlp --help` (and a mistyped command) answers without loading torch."""

from __future__ import annotations

import argparse
import importlib
import sys

from dlp import __version__

# command -> (module contributing it through `configure_parser(subparsers, argv)`, one-line help)
COMMANDS = {
    "train": ("dlp.engine.cli", "train a model (any family: dlp, dlpv2, ddlp)"),
    "eval": ("dlp.evaluation.cli", "evaluate a checkpoint or run directory"),
    "demo": ("dlp.demo.cli", "interactive particle demo (or headless edits with --edit/--save)"),
    "predict": ("dlp.predict_cli", "video prediction with a DDLP checkpoint, written as GIF/MP4 with trajectories"),
    "prepare": ("dlp.data.cli", "turn videos or frame folders into a frame array for training"),
    "presets": ("dlp.presets_cli", "list the model families and presets with their hyper-parameters"),
    "convert-official": ("dlp.compat.cli", "convert an official state dict into a dlp checkpoint"),
    "export-official": ("dlp.compat.cli", "export a dlp checkpoint to the official state-dict layout"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `dlp` parser; the full parser of the command named in `argv` (of every command when `argv` is None)."""
    parser = argparse.ArgumentParser(prog="dlp", description="Deep Latent Particles: train, evaluate, explore.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = {module for name, (module, _) in COMMANDS.items() if argv is None or name in argv}
    configured: set[str] = set()
    for name, (module, help_text) in COMMANDS.items():
        if module in wanted:
            if module not in configured:
                importlib.import_module(module).configure_parser(subparsers, argv)
                configured.add(module)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(argv if command in COMMANDS else [])
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
