"""The `refseg` command: one sub-command per module in `refseg.commands`.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int`` and keeps
its top level free of heavy imports; ``run`` imports what it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import sys

from refseg.errors import RefsegError

# name -> (module, one-line help)
COMMANDS = {
    "data": ("refseg.commands.data", "count and verify a downloaded benchmark"),
    "synth": ("refseg.commands.synth", "generate the synthetic benchmark"),
    "score": ("refseg.commands.score", "score a predictions file against a split"),
    "train": ("refseg.commands.train", "train a model from a config"),
    "eval": ("refseg.commands.eval", "evaluate a checkpoint on a split"),
    "predict": ("refseg.commands.predict", "run a checkpoint on images and a sentence"),
    "demo": ("refseg.commands.demo", "synthesise, train, evaluate and report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refseg",
        description="Referring expression segmentation and comprehension: data, training, "
        "evaluation and inference.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not available in this build
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


@contextlib.contextmanager
def _plain_warnings(command: str):
    """Print warnings as ``refseg CMD: warning: ...`` instead of with file:line, for the
    command's duration (a caller of `main` gets its own format back)."""
    import warnings

    def formatwarning(message, category, filename, lineno, line=None):
        return f"refseg {command}: warning: {message}\n"

    saved, warnings.formatwarning = warnings.formatwarning, formatwarning
    try:
        yield
    finally:
        warnings.formatwarning = saved


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's arguments. A command's ``KEY=VALUE`` overrides may come anywhere,
    also after its options (``refseg train CONFIG --out DIR lr=1e-3``), which argparse
    alone would refuse once the positionals before the options were taken."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all(_OVERRIDE.match(a) for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        with _plain_warnings(args.command):
            return int(args._run(args) or 0)
    except RefsegError as exc:
        print(f"refseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command could not read or write, named by the OS
        print(f"refseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"refseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
