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

COMMANDS = (toy, vae, compare, families)
"""Modules with ``add_parser(subparsers)``, which registers a subcommand whose ``func`` runs it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppl-reparam",
        description="Score-function vs pathwise ELBO gradients in Pyro and NumPyro: measure "
        "their mean, variance, signal-to-noise and cost on identical models and guides.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ppl-reparam {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ppl-reparam {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
