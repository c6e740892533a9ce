"""The ``diffusion-cam`` command line: one sub-command per module, mirroring the Python API."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Sequence

from ..errors import DiffusionCamError

#: sub-command modules; each defines ``add_parser(subparsers)`` and ``run(args) -> int``
COMMANDS = ("explain", "calibrate", "check", "models", "train", "report", "bench", "select", "intervals")


def _one_line_usage(parser: argparse.ArgumentParser) -> str:
    """``prog POSITIONALS --required X [options]``: argparse's own usage lists every option over many lines."""
    parts = [parser.prog]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parts.append(action.metavar or "COMMAND")
        elif not action.option_strings:
            name = action.metavar or action.dest
            parts.append({"+": f"{name} [{name} ...]", "*": f"[{name} ...]", "?": f"[{name}]"}.get(action.nargs, name))
        elif action.required:
            parts.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
    return " ".join(parts) + f" [options]  ({parser.prog} --help for all)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are two lines: the short usage and ``error: ...``."""

    def error(self, message: str):
        self.exit(2, f"usage: {_one_line_usage(self)}\nerror: {_one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="diffusion-cam",
        description="Visual explanations (Diffusion-CAM) for diffusion multimodal LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"diffusion-cam {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    parser.commands = dict(sub.choices)
    return parser


def _one_line(message: object) -> str:
    # the CLI promises one line per error or warning, whatever the message (torch's often span several)
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse would blame the top-level parser; the option was given to the sub-command
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = args.debug or bool(os.environ.get("DIFFUSION_CAM_DEBUG"))
    if not debug:
        warnings.showwarning = _show_warning
    try:
        return int(args.run(args) or 0)
    except DiffusionCamError as err:
        if debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1 if isinstance(err, MemoryError) else 2  # running out of memory keeps its own status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            raise
        print("error: out of memory; try --dtype bfloat16, a smaller --chunk-size or fewer --targets", file=sys.stderr)
        return 1
    except Exception as err:  # an unexpected failure still gets one line; --debug shows the traceback
        if debug:
            raise
        if type(err).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
            print("error: out of accelerator memory; try a smaller --chunk-size, fewer tokens or --dtype bfloat16",
                  file=sys.stderr)
            return 1
        print(f"error: internal error {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
