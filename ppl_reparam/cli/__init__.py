"""``ppl-reparam``: the command-line entry point; each subcommand lives in its own module.

Subcommand modules are light to import: argument definitions at module level, torch, Pyro and the
plotting imported inside their ``run``, so ``ppl-reparam --help`` loads neither torch nor JAX.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import compare, families, toy, vae
from .common import OneLineParser, out_of_memory

COMMANDS = (toy, vae, compare, families)
"""Modules with ``add_parser(subparsers)``, which registers a subcommand whose ``func`` runs it."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ppl-reparam",
        description="Score-function vs pathwise ELBO gradients in Pyro and NumPyro: measure "
        "their mean, variance, signal-to-noise and cost on identical models and guides.",
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser
    )
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command of ``argv``; return its exit code (2 for any bad input, one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error (2), already printed
        return int(done.code or 0)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ppl-reparam {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        print(f"ppl-reparam {args.command}: error: out of memory ({one_line(e)}); give fewer particles, a smaller "
              "--batch-size or smaller layers", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ppl-reparam {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def one_line(error: BaseException) -> str:
    """``error``'s message on one line, without the trace-shape tables Pyro appends to an error raised
    inside a model or guide (kept in ``__cause__`` chains of the same message)."""
    while error.__cause__ is not None and str(error).startswith(str(error.__cause__)):
        error = error.__cause__
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
