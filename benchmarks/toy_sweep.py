r"""Time the classic toy sweep several ways in one process and print the ratios.

Workload: gradient estimates of E_{x~N(theta,1)}[x^2] at theta = 2, N in 10 .. 100000 samples,
100 repetitions each, score function and pathwise.

1. NumPy loop, as in the classic notebook: a loop over repetitions drawing N normals each.
2. Hand-written Pyro loop: one ``Trace_ELBO(num_particles=N, vectorize_particles=True)``
   ``loss_and_grads`` per repetition (``has_rsample_(False)`` on the guide for the score function).
3. ``ppl_reparam.pyro.gradient_variance`` on the project's toy model and guide
   (``ScoreFunctionELBO`` / ``PathwiseELBO``, closed-form entropy, vectorized particles).
4. Two floors, no Pyro: the same estimates written directly in torch, each repetition's gradient by
   ``torch.autograd.grad`` of its surrogate, :math:`\overline{f(x)\log q(x)}` (x detached) and
   :math:`\overline{f(\theta + \epsilon)}` ("torch autograd, no model": what any measurement that
   differentiates a traced program pays at least); and the per-sample gradients by their closed forms,
   as the NumPy loop ("torch closed form, no autograd").
5. The floor of going through Pyro: only the traces that ``gradient_variance``'s passes run (guide and
   model at the same vectorized sizes, with their log densities, by ``Trace_ELBO._get_traces``), twice
   for the two estimators, with no surrogate and no gradient ("pyro traces only, no gradient").

Each runs the whole sweep once untimed first (imports, lazy initialisation, the first forward-mode
call), then once timed: warm figures, one torch thread (``benchmarks/as_users_run.py`` has cold ones
and the default thread policy). Run:

    .venv/bin/python benchmarks/toy_sweep.py [--reps 100] [--samples 10,100,1000,10000,100000] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from reference import THETA, numpy_loop

from ppl_reparam.models.toy_gaussian import ToyGaussian
from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO, gradient_variance


def pyro_loop(samples: list[int], reps: int, seed: int = 0) -> None:
    toy = ToyGaussian(THETA)
    pyro.set_rng_seed(seed)

    def score_guide():
        theta = pyro.param("theta", torch.tensor(THETA))
        pyro.sample("x", dist.Normal(theta, 1.0).has_rsample_(False))

    for n in samples:
        elbo = Trace_ELBO(num_particles=n, vectorize_particles=True, max_plate_nesting=0)
        for guide in (score_guide, toy.guide):
            grads = []
            for _ in range(reps):
                pyro.get_param_store().clear()
                elbo.loss_and_grads(toy.model, guide)
                grads.append(pyro.param("theta").unconstrained().grad.item())
            np.var(grads)


def torch_autograd(samples: list[int], reps: int, seed: int = 0) -> None:
    """Floor 4: each repetition's gradient by reverse mode of its surrogate, in torch without Pyro."""
    torch.manual_seed(seed)
    theta = torch.tensor(THETA, requires_grad=True)
    for n in samples:
        score, path = [], []
        for _ in range(reps):
            x = (theta + torch.randn(n)).detach()
            log_q = -0.5 * (x - theta) ** 2
            score.append(torch.autograd.grad((x**2 * log_q).mean(), theta)[0])
        for _ in range(reps):
            path.append(torch.autograd.grad(((theta + torch.randn(n)) ** 2).mean(), theta)[0])
        torch.stack(score).var(), torch.stack(path).var()


def torch_closed_form(samples: list[int], reps: int, seed: int = 0) -> None:
    """Floor 4: the per-sample gradients by their closed forms in torch, as the NumPy loop."""
    torch.manual_seed(seed)
    for n in samples:
        score, path = [], []
        for _ in range(reps):
            x = THETA + torch.randn(n)
            score.append((x**2 * (x - THETA)).mean())
        for _ in range(reps):
            path.append((2 * (THETA + torch.randn(n))).mean())
        torch.stack(score).var(), torch.stack(path).var()


def pyro_traces(samples: list[int], reps: int, seed: int = 0) -> None:
    """Floor 5: the traces of ``gradient_variance``'s passes (``chunk_particles`` 2^18), nothing else."""
    toy = ToyGaussian(THETA)
    pyro.set_rng_seed(seed)
    for n in samples:
        per_pass = min(reps, max(1, 2**18 // n))
        elbo = Trace_ELBO(num_particles=per_pass * n, vectorize_particles=True, max_plate_nesting=0)
        for _ in range(2 * -(-reps // per_pass)):
            for _ in elbo._get_traces(toy.model, toy.guide, (), {}):
                pass


def project(samples: list[int], reps: int, seed: int = 0) -> None:
    toy = ToyGaussian(THETA)
    pyro.get_param_store().clear()
    for n in samples:
        for cls in (ScoreFunctionELBO, PathwiseELBO):
            elbo = cls(num_particles=n, vectorize_particles=True, max_plate_nesting=0, analytic_kl=True)
            gradient_variance(elbo, toy.model, toy.guide, num_reps=reps, seed=seed)


def timed(fn, samples: list[int], reps: int) -> float:
    fn(samples, reps)  # warm-up: imports and lazy initialisation (forward mode's first call among them)
    start = time.perf_counter()
    fn(samples, reps)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--samples", default="10,100,1000,10000,100000")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the NumPy loop uses one)")
    args = parser.parse_args()
    samples = [int(s) for s in args.samples.split(",")]
    logging.getLogger("pyro").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    times = {
        "numpy loop": timed(numpy_loop, samples, args.reps),
        "pyro Trace_ELBO loop": timed(pyro_loop, samples, args.reps),
        "ppl_reparam gradient_variance": timed(project, samples, args.reps),
        "torch autograd, no model": timed(torch_autograd, samples, args.reps),
        "torch closed form, no autograd": timed(torch_closed_form, samples, args.reps),
        "pyro traces only, no gradient": timed(pyro_traces, samples, args.reps),
    }
    ref = times["numpy loop"]
    print(f"toy sweep: N in {samples}, {args.reps} repetitions, score function and pathwise")
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, numpy {np.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'method':32s} {'seconds':>8s} {'/ numpy loop':>13s}")
    for name, seconds in times.items():
        print(f"{name:32s} {seconds:8.3f} {seconds / ref:13.2f}")


if __name__ == "__main__":
    main()
