"""Time the classic toy sweep two ways in one process and print the ratios (NumPyro backend).

Workload: gradient estimates of E_{x~N(theta,1)}[x^2] at theta = 2, N in 10 .. 100000 samples,
100 repetitions each, score function and pathwise.

1. NumPy loop, as in the classic notebook: a loop over repetitions drawing N normals each.
2. ``ppl_reparam.numpyro.gradient_variance`` on the project's NumPyro toy model and guide
   (``ScoreFunctionELBO`` / ``PathwiseELBO``, closed-form entropy, particles mapped with ``jax.vmap``,
   JAX's default threefry PRNG).
3. For reference, the floor of any JAX implementation: the same estimates written directly in
   ``jax.numpy``, one jitted call per N drawing all ``reps x N`` normals at once (no model, no per-particle
   keys). NumPyro gives every particle its own key and splits it again at each sample site, so
   ``gradient_variance`` pays several threefry hashes per particle where this floor pays one.
4. The floor of NumPyro's way of drawing: the same estimates in ``jax.numpy`` with each particle's
   gradient by ``jax.grad`` and each particle drawn as NumPyro draws it: its own key from a split, split
   again for its one sample site (``numpyro.handlers.seed``), then one normal.

Each method runs the whole sweep twice: the first run is the warm-up (imports, lazy initialisation,
and for JAX the jit compilation of every N), the second is timed warm. For JAX both times are printed:
"cold" includes compilation, "warm" does not. Run:

    .venv/bin/python benchmarks/toy_sweep_numpyro.py [--reps 100] [--samples 10,100,1000,10000,100000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from reference import THETA, numpy_loop

from ppl_reparam.models.toy_gaussian_numpyro import ToyGaussian
from ppl_reparam.numpyro import PathwiseELBO, ScoreFunctionELBO, gradient_variance


def jax_floor() -> Callable[[list[int], int], None]:
    """The sweep written directly in jax.numpy (see the module docstring)."""

    @partial(jax.jit, static_argnums=(1, 2))
    def estimates(key: jax.Array, n: int, reps: int) -> tuple[jax.Array, jax.Array]:
        score_key, path_key = jax.random.split(key)
        x = THETA + jax.random.normal(score_key, (reps, n))
        score = jnp.mean(x**2 * (x - THETA), axis=1)
        x = THETA + jax.random.normal(path_key, (reps, n))
        return jnp.var(score), jnp.var(jnp.mean(2 * x, axis=1))

    def run(samples: list[int], reps: int, seed: int = 0) -> None:
        for n in samples:
            jax.block_until_ready(estimates(jax.random.PRNGKey(seed), n, reps))

    return run


def jax_keyed() -> Callable[[list[int], int], None]:
    """The sweep drawn as NumPyro draws, with gradients by ``jax.grad`` (see the module docstring)."""

    def particle(estimator: str, key: jax.Array, theta: jax.Array) -> jax.Array:
        _, site_key = jax.random.split(key)  # what numpyro.handlers.seed does at a sample site
        eps = jax.random.normal(site_key)

        def surrogate(theta: jax.Array) -> jax.Array:
            if estimator == "score":
                x = jax.lax.stop_gradient(theta + eps)
                return x**2 * -0.5 * (x - theta) ** 2
            return (theta + eps) ** 2

        return jax.grad(surrogate)(theta)

    @partial(jax.jit, static_argnums=(1, 2, 3))
    def variance(key: jax.Array, estimator: str, n: int, reps: int) -> jax.Array:
        keys = jax.random.split(key, reps * n)
        grads = jax.vmap(partial(particle, estimator), (0, None))(keys, jnp.asarray(THETA))
        return jnp.var(grads.reshape(reps, n).mean(1))

    def run(samples: list[int], reps: int, seed: int = 0) -> None:
        for n in samples:
            for estimator in ("score", "path"):
                jax.block_until_ready(variance(jax.random.PRNGKey(seed), estimator, n, reps))

    return run


def project() -> Callable[[list[int], int], None]:
    """The sweep through ``gradient_variance``; the ELBOs are built once so that the compiled
    function of each N is reused by the timed run."""
    toy = ToyGaussian(THETA)
    elbos: dict[int, list] = {}

    def run(samples: list[int], reps: int, seed: int = 0) -> None:
        for n in samples:
            if n not in elbos:
                elbos[n] = [cls(num_particles=n, analytic_kl=True) for cls in (ScoreFunctionELBO, PathwiseELBO)]
            for elbo in elbos[n]:
                gradient_variance(elbo, toy.model, toy.guide, num_reps=reps, seed=seed)

    return run


def cold_and_warm(fn: Callable[[list[int], int], None], samples: list[int], reps: int) -> tuple[float, float]:
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fn(samples, reps)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--samples", default="10,100,1000,10000,100000")
    args = parser.parse_args()
    samples = [int(s) for s in args.samples.split(",")]
    times = {
        "numpy loop": cold_and_warm(numpy_loop, samples, args.reps),
        "ppl_reparam gradient_variance": cold_and_warm(project(), samples, args.reps),
        "jax.numpy floor (no model)": cold_and_warm(jax_floor(), samples, args.reps),
        "jax.numpy, NumPyro's keys, grad": cold_and_warm(jax_keyed(), samples, args.reps),
    }
    ref = times["numpy loop"][1]
    print(f"toy sweep: N in {samples}, {args.reps} repetitions, score function and pathwise")
    print(f"jax {jax.__version__} on {jax.default_backend()}, numpyro {numpyro.__version__}, "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs")
    print("cold: first run of the sweep (for JAX: includes jit compilation of every N); "
          "warm: second run (compiled functions reused); ratio: warm / numpy loop warm")
    print(f"{'method':32s} {'cold s':>8s} {'warm s':>8s} {'/ numpy loop':>13s}")
    for name, (cold, warm) in times.items():
        print(f"{name:32s} {cold:8.3f} {warm:8.3f} {warm / ref:13.2f}")


if __name__ == "__main__":
    main()
