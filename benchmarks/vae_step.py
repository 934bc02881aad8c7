"""Time one SVI step of the digits VAE with this project's ELBOs against Pyro's own, in one process.

Model and batch: :mod:`ppl_reparam.models.vae` (64-128-8), the first 100 binarized training digits,
plate scaled to the 1,438 training images, Adam (lr 1e-3), one particle. Pairs:

1. ``PathwiseELBO`` against Pyro's ``Trace_ELBO``, guide :class:`~ppl_reparam.pyro.AmortizedNormal`.
2. ``ScoreFunctionELBO`` against Pyro's ``TraceGraph_ELBO`` with the same encoder and a Normal that
   has no ``rsample`` (a subclass with ``has_rsample = False``: ``has_rsample_(False)`` cannot be
   used, it raises on ``.to_event`` inside a plate), so TraceGraph_ELBO builds the score-function term.

All four share the parameters. Each repetition times one step of every configuration, in an order
rotated between repetitions; after ``--warmup`` untimed steps each, it reports the median over
``--reps`` repetitions and the ratios ours / Pyro's (target <= 1.10). Then it times
``gradient_variance`` with 100 repetitions for each of our ELBOs, relative to one step. ``--profile``
prints where our ELBOs' steps spend their time. Run:

    .venv/bin/python benchmarks/vae_step.py [--reps 300] [--warmup 20] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam
from threadpoolctl import threadpool_limits

from ppl_reparam.data import load_dataset
from ppl_reparam.models.vae import make_vae
from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO, gradient_variance
from ppl_reparam.pyro.guides import AmortizedNormal, data_plate


class NonReparameterizedNormal(dist.Normal):
    """A Normal whose samples carry no gradient: Pyro's ELBOs treat its sites as score-function sites."""

    has_rsample = False


def score_guide(guide: AmortizedNormal):
    """The same guide, with its Normal drawn without ``rsample`` (for Pyro's TraceGraph_ELBO)."""

    def fn(x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        loc, scale = guide.encode(x)
        with data_plate(guide.plate_name, x.shape[0], num_data):
            return pyro.sample(guide.site, NonReparameterizedNormal(loc, scale).to_event(1))

    return fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

    pyro.set_rng_seed(0)
    data = load_dataset("digits")
    x = torch.from_numpy(data.train[:100])
    num_data = len(data.train)
    model, guide = make_vae()
    configs = {
        "PathwiseELBO": (guide, PathwiseELBO(max_plate_nesting=1)),
        "Trace_ELBO": (guide, Trace_ELBO(max_plate_nesting=1)),
        "ScoreFunctionELBO": (guide, ScoreFunctionELBO(max_plate_nesting=1)),
        "TraceGraph_ELBO (no rsample)": (score_guide(guide), TraceGraph_ELBO(max_plate_nesting=1)),
    }
    svis = {name: SVI(model, g, Adam({"lr": 1e-3}), elbo) for name, (g, elbo) in configs.items()}
    for svi in svis.values():
        for _ in range(args.warmup):
            svi.step(x, num_data=num_data)
    times: dict[str, list[float]] = {name: [] for name in svis}
    names = list(svis)
    for r in range(args.reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            svis[name].step(x, num_data=num_data)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}

    print(f"one SVI step, 64-128-8 VAE, batch 100, median of {args.reps} interleaved repetitions, "
          f"{args.threads} thread(s), torch {torch.__version__}, pyro {pyro.__version__}")
    for name, t in median.items():
        print(f"  {name:30s} {t * 1e3:7.3f} ms")
    for ours, theirs in (("PathwiseELBO", "Trace_ELBO"), ("ScoreFunctionELBO", "TraceGraph_ELBO (no rsample)")):
        print(f"  ratio {ours} / {theirs}: {median[ours] / median[theirs]:.3f} (target <= 1.10)")

    for name in ("PathwiseELBO", "ScoreFunctionELBO"):
        elbo = configs[name][1]
        start = time.perf_counter()
        gradient_variance(elbo, model, guide, x, num_reps=100, seed=0, num_data=num_data)
        seconds = time.perf_counter() - start
        print(f"  gradient_variance({name}, num_reps=100): {seconds:.3f} s = "
              f"{seconds / median[name]:.0f} steps")

    if args.profile:
        for name in ("PathwiseELBO", "ScoreFunctionELBO"):
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.reps):
                svis[name].step(x, num_data=num_data)
            profile.disable()
            print(f"\nprofile of {args.reps} steps of {name} (cumulative time):")
            pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
