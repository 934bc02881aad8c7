"""Time one SVI step of ScoreFunctionELBO against Pyro's TraceGraph_ELBO on the same guide, in one process.

Both Rao-Blackwellize by provenance tracking and give the same gradient draw for draw
(tests/test_tracegraph_equality.py), so this compares cost only. Models: the digits VAE of
:mod:`ppl_reparam.models.vae` (batch 100) and, from tests/corpus_pyro.py, Pyro's example programs at
their sizes there (eight_schools with its hand-written guide and with AutoNormal, inclined_plane,
sparse_gamma_def, ss_vae_M2 on an unlabelled batch). TraceGraph_ELBO runs on
``force_estimator(guide, "score")``, so both see a guide whose every site is a score-function site.

A third configuration, "untracked", is ScoreFunctionELBO with provenance tracking switched off and
every term in every score-function site's cost (unbiased, not Rao-Blackwellized): the difference
between it and ScoreFunctionELBO is what the exact dependencies cost.

Each repetition times one step of every configuration, in an order rotated between repetitions, on
fresh parameters per configuration; the medians over ``--reps`` repetitions after ``--warmup`` steps,
and the ratios to TraceGraph_ELBO (target <= 1.0), are printed. Run:

    .venv/bin/python benchmarks/score_step.py [--reps 200] [--warmup 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, TraceGraph_ELBO
from pyro.optim import Adam
from threadpoolctl import threadpool_limits

from ppl_reparam.data import load_dataset
from ppl_reparam.models.vae import make_vae
from ppl_reparam.pyro import ScoreFunctionELBO, force_estimator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import corpus_pyro  # noqa: E402  (the test corpus: Pyro's example programs at small sizes)

CASES = ["eight_schools", "eight_schools_auto_normal", "inclined_plane", "sparse_gamma_def", "ss_vae_m2_unlabelled"]


class UntrackedScoreFunctionELBO(ScoreFunctionELBO):
    """ScoreFunctionELBO without provenance tracking: every term in every score-function site's cost."""

    def _forced(self, guide, track=False):
        return super()._forced(guide, track=False)

    def _terms(self, model_trace, guide_trace):
        terms, _, score_sites = super()._terms(model_trace, guide_trace)
        everything = frozenset(site.name for site in score_sites)
        return terms, [everything] * len(terms), score_sites


def problems():
    """``{name: (make(), args, kwargs, nesting)}`` where ``make()`` builds a fresh (model, guide)."""
    data = load_dataset("digits")
    x = torch.from_numpy(data.train[:100])
    out = {"digits VAE": (make_vae, (x,), {"num_data": len(data.train)}, 1)}
    for case in corpus_pyro.CORPUS:
        if case.name in CASES:
            out[case.name] = (lambda c=case: corpus_pyro.fresh(c), case.args, case.kwargs, case.max_plate_nesting)
    return out


def time_problem(make, args, kwargs, nesting, reps: int, warmup: int) -> dict[str, float]:
    configs = {
        "ScoreFunctionELBO": (False, ScoreFunctionELBO(max_plate_nesting=nesting)),
        "TraceGraph_ELBO": (True, TraceGraph_ELBO(max_plate_nesting=nesting)),
        "untracked": (False, UntrackedScoreFunctionELBO(max_plate_nesting=nesting)),
    }
    svis, stores = {}, {}
    for name, (force, elbo) in configs.items():
        pyro.clear_param_store()
        model, guide = make()
        guide = force_estimator(guide, "score") if force else guide
        svis[name] = SVI(model, guide, Adam({"lr": 1e-3}), elbo)
        for _ in range(warmup):
            svis[name].step(*args, **kwargs)
        stores[name] = pyro.get_param_store().get_state()
    times: dict[str, list[float]] = {name: [] for name in svis}
    names = list(svis)
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            pyro.get_param_store().set_state(stores[name])
            start = time.perf_counter()
            svis[name].step(*args, **kwargs)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    pyro.set_rng_seed(0)
    print(f"one SVI step, median of {args.reps} interleaved repetitions, {args.threads} thread(s), "
          f"torch {torch.__version__}, pyro {pyro.__version__}")
    print(f"  {'model':28s} {'ours ms':>9s} {'TraceGraph ms':>14s} {'untracked ms':>13s} "
          f"{'ours / TraceGraph':>18s} {'tracking cost':>14s}")
    for name, (make, a, kw, nesting) in problems().items():
        m = time_problem(make, a, kw, nesting, args.reps, args.warmup)
        ours, theirs, untracked = m["ScoreFunctionELBO"], m["TraceGraph_ELBO"], m["untracked"]
        print(f"  {name:28s} {ours * 1e3:9.3f} {theirs * 1e3:14.3f} {untracked * 1e3:13.3f} "
              f"{ours / theirs:18.3f} {ours / untracked - 1:13.0%}")


if __name__ == "__main__":
    main()
