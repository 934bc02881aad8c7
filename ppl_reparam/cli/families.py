"""``ppl-reparam families``: score-function against pathwise gradients, family by family.

The command's arguments; the study is :mod:`ppl_reparam.families`, with each backend's part in
:mod:`ppl_reparam.pyro.families` and :mod:`ppl_reparam.numpyro.families`, imported when the command
runs (so that ``ppl-reparam --help`` loads neither torch nor JAX).
"""

from __future__ import annotations

import argparse

from ..families import DEFAULT_SAMPLES, Backend
from ..stats import MIN_REPS
from .common import HelpFormatter, number, text, threads

BACKENDS = ("pyro", "numpyro")


def _backend(name: str) -> Backend:
    """The study's backend called ``name`` (one of :data:`BACKENDS`), importing its framework."""
    if name == "pyro":
        from ..pyro.families import PYRO

        return PYRO
    from ..numpyro.families import NUMPYRO

    return NUMPYRO


def run(args: argparse.Namespace) -> None:
    from ..families import family_table, summary_table
    from ..report import ResultSet, atomic_write_text, check_output_folder, write_csv, write_json

    names = BACKENDS if args.backend == "both" else (args.backend,)
    out = check_output_folder(args.out)
    backends = [_backend(name) for name in names]  # loads torch before the thread policy reaches it
    with threads(args.threads, work=args.samples):
        rows = family_table(backends, args.samples, args.seed)
    header = (f"Gradient of E[f(x)] per family, {' and '.join(names)}: {args.samples} per-sample gradients of "
              f"each estimator, seed {args.seed}; mean ± standard error, per-sample variance with Bonett's 95% "
              "interval.")
    table = summary_table(rows)
    print(header)
    print(table)
    with ResultSet(out, "families") as results:
        write_csv(rows, results.path("families.csv"))
        write_json({"samples": args.samples, "seed": args.seed, "backends": list(names), "rows": rows},
                   results.path("families.json"))
        atomic_write_text(results.path("families.md"), f"{header}\n\n{table}\n")
    print("wrote " + ", ".join(str(f) for f in results.files))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "families",
        help="per distribution family: pathwise and score-function gradients of a closed-form expectation",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--samples", type=number(MIN_REPS, 10**7, integer=True), default=DEFAULT_SAMPLES,
                        help="per-sample gradients per estimator")
    parser.add_argument("--seed", type=number(0, 2**32 - 1, integer=True), default=0)
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="pyro",
                        help="Pyro, NumPyro, or both side by side in the table (NumPyro lacks some families)")
    parser.add_argument("--out", type=text("--out"), default="results",
                        help="folder for families.csv, families.json, families.md")
    parser.add_argument("--threads", type=number(1, 1024, integer=True), default=None,
                        help="CPU threads for torch and BLAS (None: one unless an operation is large)")
    parser.set_defaults(func=run)
