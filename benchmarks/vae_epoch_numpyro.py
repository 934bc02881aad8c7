"""Time one training epoch of the digits VAE in Pyro and NumPyro, with this project's ELBOs and the
frameworks' own, in one process.

Workload: the 64-128-8 VAE (:mod:`ppl_reparam.models.vae`, :mod:`ppl_reparam.models.vae_numpyro`: the
same function, weights aside), the 1,438 binarized training digits in shuffled minibatches of 100 (15
batches, the last of 38), plate scaled to 1,438, Adam (lr 1e-3), one particle. Each configuration is a
``TrainingRun`` of its backend (:mod:`ppl_reparam.pyro.training`, :mod:`ppl_reparam.numpyro.training`)
and an epoch is its ``train_epoch``, what ``ppl-reparam vae`` trains: shuffle, slice, one SVI step per
batch, the epoch's loss read back at the end. Configurations:

1. Pyro ``Trace_ELBO`` and 2. Pyro ``PathwiseELBO`` (``svi.step``), guide
   :class:`~ppl_reparam.pyro.AmortizedNormal`;
3. NumPyro ``Trace_ELBO``, 4. NumPyro ``TraceGraph_ELBO`` with the same guide drawing from a Normal
   without ``rsample`` (a subclass with no reparameterized parameters, so TraceGraph_ELBO builds the
   score-function term), 5. ``ppl_reparam.numpyro.PathwiseELBO`` and 6. ``ScoreFunctionELBO``, each
   ``jax.jit(svi.update)`` (one compiled program per batch shape).

Each configuration first runs one untimed warm-up epoch (for NumPyro it includes the compilation). Then
each repetition times one epoch of every configuration in a fresh random order, so that drift on a
shared machine hits all alike and no configuration always follows the same one (a NumPyro epoch right
after a Pyro one starts on caches the other framework filled; a rotated order would always charge that
to the same configuration). Printed: the median seconds per epoch over ``--reps`` repetitions, and the
ratios ours / NumPyro's (pathwise against Trace_ELBO, score function against TraceGraph_ELBO; target
<= 1.10) and NumPyro / Pyro, each as the ratio of the medians and as the median of the per-repetition
ratios (both epochs ran close in time) with a 95% bootstrap percentile interval: on a busy machine
single epochs vary by tens of per cent. Every framework runs on ``--threads`` threads (torch's intra-op
pool; XLA's CPU Eigen pool, set through ``XLA_FLAGS`` before JAX loads). ``--profile`` prints, per
NumPyro configuration, the XLA cost analysis of its compiled step (flops, bytes) and the step's wall
time alone against the epoch's time per step (the difference is the epoch's Python and dispatch). Run:

    .venv/bin/python benchmarks/vae_epoch_numpyro.py [--reps 100] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial


def _set_threads(threads: int) -> None:
    """One intra-op thread per framework (before JAX is imported: XLA reads its flags once)."""
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100, help="timed epochs per configuration")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and XLA")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if "jax" in sys.modules:
        raise RuntimeError("run this script as a program: JAX must not be loaded before its thread flags are set")
    _set_threads(args.threads)

    import jax
    import numpy as np
    import numpyro
    import numpyro.distributions as ndist
    import pyro
    import torch
    from numpyro.infer import Trace_ELBO as NumPyroTrace_ELBO
    from numpyro.infer import TraceGraph_ELBO as NumPyroTraceGraph_ELBO
    from pyro.infer import Trace_ELBO
    from threadpoolctl import threadpool_limits

    from ppl_reparam import numpyro as ours_numpyro
    from ppl_reparam import pyro as ours_pyro
    from ppl_reparam.data import load_dataset
    from ppl_reparam.models.vae import make_vae as make_pyro_vae
    from ppl_reparam.models.vae_numpyro import VAE, data_plate
    from ppl_reparam.models.vae_numpyro import make_vae as make_numpyro_vae
    from ppl_reparam.numpyro.training import TrainingRun as NumPyroRun
    from ppl_reparam.pyro.training import TrainingRun as PyroRun

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

    class NonReparameterizedNormal(ndist.Normal):
        """A Normal without a reparameterized sampler: NumPyro's ELBOs treat its sites as score-function
        sites (TraceGraph_ELBO stops the sample's gradient and adds the score term)."""

        reparametrized_params: list[str] = []

    def score_guide(vae: VAE) -> Callable:
        """The VAE's guide with its Normal drawn without ``rsample`` (for TraceGraph_ELBO)."""

        def guide(x: jax.Array, num_data: int | None = None) -> jax.Array:
            loc, scale = vae.encode(vae.encoder.params(), x)
            with data_plate(vae.plate_name, x.shape[0], num_data):
                return numpyro.sample(vae.site, NonReparameterizedNormal(loc, scale).to_event(1))

        return guide

    train = load_dataset("digits").train
    num_data = len(train)
    vae = make_numpyro_vae()

    def pyro_run(name: str, elbo: object) -> PyroRun:
        pyro.set_rng_seed(0)  # every run from the same weights
        return PyroRun(name, *make_pyro_vae(), elbo, 1e-3, 0)

    def numpyro_run(name: str, elbo: object, guide: Callable) -> NumPyroRun:
        return NumPyroRun(name, vae.model, guide, elbo, 1e-3, 0, train[: args.batch_size], num_data)

    runs = [
        pyro_run("Pyro Trace_ELBO", Trace_ELBO(max_plate_nesting=1)),
        pyro_run("Pyro PathwiseELBO (ours)", ours_pyro.PathwiseELBO(max_plate_nesting=1)),
        numpyro_run("NumPyro Trace_ELBO", NumPyroTrace_ELBO(), vae.guide),
        numpyro_run("NumPyro TraceGraph_ELBO (no rsample)", NumPyroTraceGraph_ELBO(), score_guide(vae)),
        numpyro_run("NumPyro PathwiseELBO (ours)", ours_numpyro.PathwiseELBO(), vae.guide),
        numpyro_run("NumPyro ScoreFunctionELBO (ours)", ours_numpyro.ScoreFunctionELBO(), vae.guide),
    ]
    epochs = {run.name: partial(run.train_epoch, train, args.batch_size) for run in runs}
    warmup = {}
    for name, epoch in epochs.items():
        start = time.perf_counter()
        epoch()
        warmup[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in epochs}
    order = np.random.default_rng(1)
    for _ in range(args.reps):
        for name in order.permutation(list(epochs)):
            start = time.perf_counter()
            epochs[name]()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}

    batches = -(-num_data // args.batch_size)
    print(
        f"one training epoch of the 64-128-8 digits VAE: {num_data} images, batch {args.batch_size} "
        f"({batches} batches); median of {args.reps} interleaved epochs after a warm-up epoch; "
        f"{args.threads} thread(s); torch {torch.__version__}, pyro {pyro.__version__}, jax {jax.__version__}, "
        f"numpyro {numpyro.__version__}, {os.cpu_count()} CPUs"
    )
    print(f"  {'configuration':40s} {'s / epoch':>10s} {'ms / step':>10s} {'warm-up s':>10s}")
    for name, t in median.items():
        print(f"  {name:40s} {t:10.4f} {t / batches * 1e3:10.3f} {warmup[name]:10.2f}")
    pairs = (
        ("NumPyro PathwiseELBO (ours)", "NumPyro Trace_ELBO", "target <= 1.10"),
        ("NumPyro ScoreFunctionELBO (ours)", "NumPyro TraceGraph_ELBO (no rsample)", "target <= 1.10"),
        ("NumPyro Trace_ELBO", "Pyro Trace_ELBO", "NumPyro / Pyro"),
        ("NumPyro PathwiseELBO (ours)", "Pyro PathwiseELBO (ours)", "NumPyro / Pyro"),
    )
    boot = np.random.default_rng(2)
    for a, b, note in pairs:
        paired = np.array(times[a]) / np.array(times[b])
        low, high = np.quantile(np.median(boot.choice(paired, (2000, len(paired))), axis=1), [0.025, 0.975])
        print(
            f"  ratio {a} / {b} ({note}): {median[a] / median[b]:.3f}; paired {np.median(paired):.3f} "
            f"[{low:.3f}, {high:.3f}]"
        )

    if args.profile:
        x = train[: args.batch_size]
        print(
            "\nper compiled step (batch of 100): XLA cost analysis, and the median wall time of the step "
            "alone (200 calls, each waited for) against the epoch's share per step"
        )
        for run in runs[2:]:
            update = jax.jit(run.svi.update, static_argnames="num_data")  # the run's step, compiled again
            compiled = update.lower(run.state, x, num_data=num_data).compile()
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            steps = []
            for _ in range(200):
                start = time.perf_counter()
                jax.block_until_ready(update(run.state, x, num_data=num_data))
                steps.append(time.perf_counter() - start)
            print(
                f"  {run.name:40s} flops {cost.get('flops', float('nan')):10.3g}  bytes "
                f"{cost.get('bytes accessed', float('nan')):10.3g}  step {statistics.median(steps) * 1e3:7.3f} ms  "
                f"epoch / steps {median[run.name] / batches * 1e3:7.3f} ms"
            )


if __name__ == "__main__":
    main()
