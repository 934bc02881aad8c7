r"""Measure the mean and variance of an ELBO's gradient estimate, without changing the parameters.

:func:`gradient_variance` draws ``num_reps`` independent gradient estimates, each from
``elbo.num_particles`` samples, at the current parameter values, and summarises them per parameter
(:class:`~ppl_reparam.stats.GradientStats`). Gradients are taken with respect to each parameter's
unconstrained value, the tensor that Pyro's optimizers update.

Two ways to draw them, chosen by ``method``:

- ``"forward"`` (vectorized): all ``num_reps x num_particles`` particles in vectorized passes of at
  most ``chunk_particles`` particles, ``k`` repetitions a pass, each pass on its own random numbers.
  A repetition's estimate is the mean over its particles' surrogate gradients. A small pass
  (``k^2 x num_particles`` at most :data:`REVERSE_LIMIT`) gets its ``k`` gradients from one backward
  pass vmapped over the repetitions (``torch.autograd.grad(..., is_grads_batched=True)``); a larger one
  from forward-mode autodiff, one pass per parameter element :math:`\phi_j` on the same random
  numbers. Both give the same numbers from the same draws; the reverse mode spares small problems
  the first forward-mode call of a process, which loads torch's compiler stack (about 1.5 s). Needs
  one of this package's ELBOs with ``vectorize_particles=True``, no leave-one-out baseline and no
  antithetic or QMC draws (which would couple particles across repetitions); cost grows with the
  number of parameter elements, so it suits few parameters (the toy problem, small conjugate models).
  A chunk's repetitions share one trace, so a randomly subsampled plate would draw its indices once
  for all of them: models that subsample are measured by ``"loop"``.
- ``"loop"``: one reverse-mode gradient per repetition, each with its own subsample. Works with any
  ELBO, Pyro's own included: through ``differentiable_loss`` where the ELBO has it, else through
  ``loss_and_grads`` (``TraceGraph_ELBO``, ``RenyiELBO``), with the parameters' ``.grad`` and the
  param store (a decaying-average baseline's state) restored after each repetition.

``"auto"`` (default) takes ``"forward"`` when it applies and the parameters have at most
``num_reps // 4`` elements, else ``"loop"``; it also takes ``"loop"`` when torch has no forward-mode
derivative for a sampler in the guide (Gamma, Beta and Dirichlet's implicit reparameterization).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyro
import torch
import torch.autograd.forward_ad as fwAD
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.subsample_messenger import _Subsample
from tqdm.auto import tqdm

from ..auto import Resolution, register_measurement, resolving
from ..choice import Choice, measure_and_choose
from ..stats import MIN_REPS, GradientStats, measure_each
from ..threads import auto_threads, limited_threads
from .elbo import EstimatorELBO
from .rng import isolated_rng, seed_all

METHODS = ("auto", "forward", "loop")


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def _run_once(
    model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Run guide and model once: ``{name: unconstrained leaf}`` of every param they use (creating
    params that are not in the param store yet, as a first SVI step would), the names of the plates
    that draw a random subsample, and the most elements of one value in the traces (a particle's
    largest operand, for the thread policy)."""
    with poutine.trace(param_only=True) as params:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    sites = [(name, site) for tr in (guide_trace, model_trace) for name, site in tr.nodes.items()]
    subsampled = [
        name
        for name, site in sites
        if isinstance(site.get("fn"), _Subsample) and site["fn"].subsample_size not in (None, site["fn"].size)
    ]
    values = [site["value"] for _, site in sites if isinstance(site.get("value"), torch.Tensor)]
    largest = max((v.numel() for v in values), default=1)
    return {name: site["value"].unconstrained() for name, site in params.trace.nodes.items()}, subsampled, largest


def trace_params(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
    """Run guide and model once; return ``{name: unconstrained leaf}`` of every param they use
    (creating params that are not in the param store yet, as a first SVI step would)."""
    return _run_once(model, guide, args, kwargs)[0]


@contextmanager
def _param_store_kept():
    """Restore the param store's entries (the same objects) after the block, and drop new ones."""
    store = pyro.get_param_store()
    saved = store.get_state()
    try:
        yield
    finally:
        for name in set(store.keys()) - set(saved["params"]):
            del store[name]
        store.set_state(saved)


def _gradient(elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict, leaves: list) -> list:
    """One gradient estimate with respect to ``leaves`` (None where a leaf gets none)."""
    if hasattr(elbo, "differentiable_loss"):
        loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
        if not loss.requires_grad:
            return [None] * len(leaves)
        return list(torch.autograd.grad(loss, leaves, allow_unused=True))
    saved = [leaf.grad for leaf in leaves]
    try:
        for leaf in leaves:
            leaf.grad = None
        with _param_store_kept():
            elbo.loss_and_grads(model, guide, *args, **kwargs)
        return [leaf.grad for leaf in leaves]
    finally:
        for leaf, grad in zip(leaves, saved):
            leaf.grad = grad


REVERSE_LIMIT = 2**20
"""Most entries of the one-hot matrix (repetitions x particles of a pass) for which a pass's
per-repetition gradients come from one batched reverse-mode call rather than forward mode."""


def _chunk_reverse(
    elbo: EstimatorELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict, leaves: list, k: int
) -> list[torch.Tensor]:
    """The ``k`` repetitions' gradients of one pass, by reverse mode: one backward pass vmapped over the
    repetitions (``is_grads_batched``), each with weights 1/n on its own particles."""
    _, surrogate = elbo.particle_losses(model, guide, *args, **kwargs)
    n = surrogate.shape[0] // k
    weights = torch.kron(torch.eye(k, dtype=surrogate.dtype), torch.full((1, n), 1.0 / n, dtype=surrogate.dtype))
    if not surrogate.requires_grad:
        return [torch.zeros(k, leaf.numel()) for leaf in leaves]
    grads = torch.autograd.grad(surrogate, leaves, weights, is_grads_batched=True, allow_unused=True)
    return [torch.zeros(k, leaf.numel()) if g is None else g.reshape(k, -1) for g, leaf in zip(grads, leaves)]


def _chunk_forward(
    elbo: EstimatorELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict, leaf: torch.Tensor,
    j: int, k: int,
) -> torch.Tensor:
    """The ``k`` repetitions' derivatives in element ``j`` of ``leaf`` of one pass, by forward mode."""
    tangent = torch.zeros_like(leaf).view(-1)
    tangent[j] = 1.0
    with torch.no_grad(), fwAD.dual_level():
        # The param store's leaf itself must carry the tangent (the model and guide read that very
        # tensor through pyro.param): copying a dual tensor into it in place, under no_grad, gives the
        # leaf the tangent e_j at this dual level without changing its value or its identity; leaving
        # the level drops the tangent again.
        leaf.copy_(fwAD.make_dual(leaf.detach().clone(), tangent.view_as(leaf)))
        _, surrogate = elbo.particle_losses(model, guide, *args, **kwargs)
        derivative = fwAD.unpack_dual(surrogate).tangent
    derivative = torch.zeros(surrogate.shape[0]) if derivative is None else derivative
    return derivative.reshape(k, -1).mean(1)


def _forward_samples(
    elbo: EstimatorELBO,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    params: dict[str, torch.Tensor],
    num_reps: int,
    seed: int,
    chunk_particles: int,
    progress: bool,
) -> dict[str, np.ndarray]:
    """Per-repetition gradients from vectorized passes of ``k`` repetitions each (see the module
    docstring): every pass draws its random numbers from its own seed, and its repetitions' gradients
    come from one batched reverse-mode call where the pass is small (``k^2 n`` at most
    :data:`REVERSE_LIMIT`), else from forward mode, one pass per parameter element on the same draws.
    Either way the same draws give the same numbers (to rounding)."""
    n = elbo.num_particles
    reps_per_chunk = max(1, min(num_reps, chunk_particles // n))
    chunks = [min(reps_per_chunk, num_reps - start) for start in range(0, num_reps, reps_per_chunk)]
    elbos = {k: elbo.with_num_particles(k * n) for k in set(chunks)}
    out = {name: np.empty((num_reps, leaf.numel())) for name, leaf in params.items()}
    bar = tqdm(total=num_reps, desc="gradient variance", disable=not progress, leave=False)
    start = 0
    for c, k in enumerate(chunks):
        chunk_seed = _chunk_seed(seed, c)
        validate = pyro.infer.util.is_validation_enabled() and c == 0
        if k * k * n <= REVERSE_LIMIT:
            seed_all(chunk_seed)
            with pyro.validation_enabled(validate):
                grads = _chunk_reverse(elbos[k], model, guide, args, kwargs, list(params.values()), k)
            for name, g in zip(params, grads):
                out[name][start : start + k] = g.double().numpy()
        else:
            for name, leaf in params.items():
                for j in range(leaf.numel()):
                    seed_all(chunk_seed)
                    with pyro.validation_enabled(validate and j == 0):
                        g = _chunk_forward(elbos[k], model, guide, args, kwargs, leaf, j, k)
                    out[name][start : start + k, j] = g.double().numpy()
        start += k
        bar.update(k)
    bar.close()
    return {name: out[name].reshape(num_reps, *leaf.shape) for name, leaf in params.items()}


def _loop_samples(
    elbo: ELBO,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    params: dict[str, torch.Tensor],
    num_reps: int,
    progress: bool,
) -> dict[str, np.ndarray]:
    """Per-repetition gradients, one reverse-mode pass each."""
    leaves = list(params.values())
    out: dict[str, list[np.ndarray]] = {name: [] for name in params}
    for _ in tqdm(range(num_reps), desc="gradient variance", disable=not progress, leave=False):
        grads = _gradient(elbo, model, guide, args, kwargs, leaves)
        for (name, leaf), grad in zip(params.items(), grads):
            out[name].append(np.zeros(leaf.shape) if grad is None else grad.detach().double().numpy())
    return {name: np.stack(values) for name, values in out.items()}


def gradient_variance(
    elbo: ELBO,
    model: Callable,
    guide: Callable,
    *args: Any,
    num_reps: int = 100,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "auto",
    chunk_particles: int = 2**18,
    progress: bool = False,
    threads: int | None = None,
    **kwargs: Any,
) -> GradientStats:
    """Mean, variance, confidence interval and SNR of ``elbo``'s gradient estimate, per parameter.

    :param elbo: a :class:`~ppl_reparam.pyro.ScoreFunctionELBO` / :class:`~ppl_reparam.pyro.PathwiseELBO`
        or any Pyro ELBO (measured with ``method="loop"``). Each estimate uses ``elbo.num_particles``
        (with Pyro's vectorized particles, one subsample shared by the particles of an estimate).
    :param model, guide, args, kwargs: as for ``SVI``.
    :param num_reps: independent estimates drawn (at least 5).
    :param seed: seeds the draws; the caller's RNG state is restored afterwards.
    :param confidence: level of the variance intervals (Bonett's, see :mod:`ppl_reparam.stats`).
    :param method: ``"auto"``, ``"forward"`` or ``"loop"`` (module docstring).
    :param chunk_particles: most particles in one vectorized pass (``"forward"``).
    :param progress: show a progress bar.
    :param threads: torch's intra-op threads during the measurement; None: one thread unless a pass's
        operations are large (:mod:`ppl_reparam.threads`). The caller's setting is restored.

    Parameter values, their ``.grad`` and the param store are left as they were.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if num_reps < MIN_REPS:
        raise ValueError(f"num_reps must be at least {MIN_REPS}, got {num_reps}")
    if chunk_particles < 1:
        raise ValueError(f"chunk_particles must be positive, got {chunk_particles}")
    # One vectorized pass puts several repetitions' particles side by side, so a baseline that
    # compares particles (leave-one-out) or coupled draws (antithetic pairs, a QMC point set) would mix
    # repetitions: those ELBOs are measured by "loop".
    couples = isinstance(elbo, EstimatorELBO) and (
        (elbo.baseline is not None and elbo.baseline.needs_particles) or elbo.noise is not None
    )
    batched = isinstance(elbo, EstimatorELBO) and elbo.vectorize_particles and not couples
    if isinstance(elbo, EstimatorELBO):  # RELAX controls fitted once, in this object, not in its copies
        elbo.fit_once(model, guide, *args, **kwargs)  # (a setup, not timed)
    start = time.perf_counter()
    if getattr(elbo, "vectorize_particles", False) and elbo.max_plate_nesting == float("inf"):
        # Pyro's ELBOs guess the nesting from a run on their first call; guessed on its own draws here,
        # the measurement's draws are the same on every call of the same ELBO object
        with isolated_rng(seed):
            elbo._guess_max_plate_nesting(model, guide, args, kwargs)
    # a guide with "auto" sites runs here for its parameters only: any estimator will do
    finding = Resolution(getattr(elbo, "auto", {}), discover=lambda name, fn: "score")
    with isolated_rng(seed):
        with resolving(finding):
            params, subsampled, largest = _run_once(model, guide, args, kwargs)
        if isinstance(elbo, EstimatorELBO) and finding.found and elbo._auto_round is None and not elbo._auto_fixed:
            # choose once here (on draws of its own), not in each copy a vectorized measurement makes
            elbo.choose_estimators(model, guide, *args, **kwargs)
        size = sum(p.numel() for p in params.values())
        auto = method == "auto"
        if auto:
            method = "forward" if batched and not subsampled and 4 * size <= num_reps else "loop"
        if method == "forward" and not batched:
            raise ValueError(
                "method='forward' needs ScoreFunctionELBO or PathwiseELBO with vectorize_particles=True, "
                "no leave-one-out baseline and no antithetic or QMC draws; use method='loop' for this ELBO"
            )
        if method == "forward" and subsampled:
            raise ValueError(
                f"method='forward' runs many repetitions in one trace, so the subsampled plates {subsampled} "
                "would draw one subsample for all of them (too low a variance); use method='loop'"
            )
        samples = None
        per_pass = min(chunk_particles, num_reps * elbo.num_particles) if method == "forward" else elbo.num_particles
        with limited_threads(auto_threads(largest * per_pass, threads)):
            if method == "forward":
                try:
                    samples = _forward_samples(
                        elbo, model, guide, args, kwargs, params, num_reps, seed, chunk_particles, progress
                    )
                except NotImplementedError as e:
                    # torch has no forward-mode derivative for some samplers (Gamma, Beta, Dirichlet);
                    # "auto" then draws the same statistics by reverse mode
                    if not (auto and "forward AD" in str(e)):
                        raise
                    seed_all(seed)
            if samples is None:
                samples = _loop_samples(elbo, model, guide, args, kwargs, params, num_reps, progress)
    seconds = time.perf_counter() - start
    return GradientStats.from_samples(samples, elbo.num_particles, seconds, confidence)


def compare_estimators(
    model: Callable,
    guide: Callable,
    elbos: Mapping[str, ELBO],
    *args: Any,
    num_reps: int = 100,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, GradientStats]:
    """:func:`gradient_variance` of each named ELBO on the same model, guide, parameter values and
    seed; write the result with :mod:`ppl_reparam.report`. Extra keyword arguments go to
    :func:`gradient_variance` when it takes them, else to the model and guide."""
    options = ("confidence", "method", "chunk_particles", "progress", "threads")
    return measure_each(gradient_variance, options, model, guide, elbos, args, kwargs, num_reps, seed)


def choose_estimator(
    model: Callable,
    guide: Callable,
    candidates: Sequence[str],
    *args: Any,
    group: Sequence[str] | str | None = None,
    criterion: str = "per_sample_variance",
    num_reps: int = 100,
    seed: int = 0,
    **kwargs: Any,
) -> Choice:
    """The candidate estimator spec (:mod:`ppl_reparam.specs`, e.g. ``["score", "score+rloo:4",
    "pathwise"]``) with the lowest work-normalized gradient variance on ``group`` (parameter names or
    prefixes; None: all) at the current parameters: :func:`compare_estimators` of the specs' ELBOs, then
    :func:`ppl_reparam.choice.choose_from_stats` (``criterion``, the reasons in ``Choice.reason()``). A
    candidate that cannot apply (pathwise on a discrete site) raises its ELBO's error; leave it out.
    ``kwargs`` go to :func:`compare_estimators`."""
    from .specs import make_elbo

    return measure_and_choose(
        compare_estimators, make_elbo, model, guide, candidates, args, kwargs, group, criterion, num_reps, seed
    )


register_measurement("pyro", gradient_variance)  # what the ELBOs' "auto" sites are measured with
