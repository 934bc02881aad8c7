"""Time one SVI step of this package's compiled ELBOs against Pyro's JitTrace_ELBO, in one process.

``JitPathwiseELBO`` against ``JitTrace_ELBO`` on the same reparameterized guide, and, for scale, the
eager ``PathwiseELBO`` and ``Trace_ELBO``: the digits VAE of :mod:`ppl_reparam.models.vae` (batch 100)
and Pyro's ``eight_schools`` (tests/corpus_pyro.py, its hand-written guide). Both compiled ELBOs are
traced by ``pyro.ops.jit`` and give the eager gradients on the same draws (tests/test_pyro_jit.py).
Default settings: fresh ELBOs and the thread policy's one torch thread. Each repetition times one step
of every configuration, in an order rotated between repetitions, after ``--warmup`` steps (the first
of which compiles: its time is reported as "first step"); medians over ``--reps`` repetitions, and the
ratio JitPathwiseELBO / JitTrace_ELBO (target <= 1.05). Run:

    .venv/bin/python benchmarks/jit_step.py [--reps 300] [--warmup 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from pyro.optim import Adam

from ppl_reparam.data import load_dataset
from ppl_reparam.models.vae import make_vae
from ppl_reparam.pyro import PathwiseELBO
from ppl_reparam.pyro.elbo import JitPathwiseELBO
from ppl_reparam.threads import limited_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import corpus_pyro  # noqa: E402  (the test corpus: Pyro's example programs at small sizes)


def problems():
    data = load_dataset("digits")
    x = torch.from_numpy(data.train[:100])
    schools = next(c for c in corpus_pyro.CORPUS if c.name == "eight_schools")
    return {
        "digits VAE": (make_vae, (x,), {"num_data": len(data.train)}),
        "eight_schools": (lambda: corpus_pyro.fresh(schools), schools.args, schools.kwargs),
    }


def time_problem(make, args, kwargs, reps: int, warmup: int) -> tuple[dict[str, float], dict[str, float]]:
    configs = {
        "JitPathwiseELBO": JitPathwiseELBO(max_plate_nesting=1),
        "JitTrace_ELBO": JitTrace_ELBO(max_plate_nesting=1),
        "PathwiseELBO": PathwiseELBO(max_plate_nesting=1),
        "Trace_ELBO": Trace_ELBO(max_plate_nesting=1),
    }
    svis, stores, first = {}, {}, {}
    for name, elbo in configs.items():
        pyro.clear_param_store()
        model, guide = make()
        svis[name] = SVI(model, guide, Adam({"lr": 1e-3}), elbo)
        began = time.perf_counter()
        svis[name].step(*args, **kwargs)
        first[name] = time.perf_counter() - began
        for _ in range(warmup):
            svis[name].step(*args, **kwargs)
        stores[name] = pyro.get_param_store().get_state()
    times: dict[str, list[float]] = {name: [] for name in svis}
    names = list(svis)
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            pyro.get_param_store().set_state(stores[name])
            began = time.perf_counter()
            svis[name].step(*args, **kwargs)
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) for name, t in times.items()}, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # jit tracer warnings
    pyro.set_rng_seed(0)
    print(f"one SVI step, median of {args.reps} interleaved repetitions, torch {torch.__version__}, "
          f"pyro {pyro.__version__}, default thread policy (one thread)")
    with limited_threads(1):
        for name, (make, a, kw) in problems().items():
            median, first = time_problem(make, a, kw, args.reps, args.warmup)
            print(f"  {name}:")
            for config, t in median.items():
                print(f"    {config:18s} {t * 1e3:8.3f} ms   first step {first[config]:6.2f} s")
            ratio = median["JitPathwiseELBO"] / median["JitTrace_ELBO"]
            print(f"    ratio JitPathwiseELBO / JitTrace_ELBO: {ratio:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
