"""``ppl-reparam families``: score-function against pathwise gradients, family by family.

The command's arguments; the work is in :mod:`ppl_reparam.pyro.families`, imported when the command
runs (so that ``ppl-reparam --help`` does not load torch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..families import DEFAULT_SAMPLES


def run(args: argparse.Namespace) -> None:
    from ..pyro.families import family_table, summary_table
    from ..report import atomic_write_text, write_csv, write_json

    rows = family_table(args.samples, args.seed)
    header = (f"Gradient of E[f(x)] per family: {args.samples} per-sample gradients of each estimator, seed "
              f"{args.seed}; mean ± standard error, per-sample variance with Bonett's 95% interval.")
    table = summary_table(rows)
    print(header)
    print(table)
    out = Path(args.out)
    files = [
        write_csv(rows, out / "families.csv"),
        write_json({"samples": args.samples, "seed": args.seed, "rows": rows}, out / "families.json"),
        atomic_write_text(out / "families.md", f"{header}\n\n{table}\n"),
    ]
    print("wrote " + ", ".join(str(f) for f in files))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "families",
        help="per distribution family: pathwise and score-function gradients of a closed-form expectation",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="per-sample gradients per estimator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results", help="folder for families.csv, families.json, families.md")
    parser.set_defaults(func=run)
