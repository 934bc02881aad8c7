r"""Measure the mean and variance of an ELBO's gradient estimate at given parameter values (NumPyro).

:func:`gradient_variance` draws ``num_reps`` independent gradient estimates, each from
``elbo.num_particles`` samples, and summarises them per parameter
(:class:`~ppl_reparam.stats.GradientStats`, the type the Pyro backend returns). Gradients are taken
with respect to each parameter's unconstrained value, what NumPyro's optimizers update: for a param
with constraint :math:`c` and :math:`\phi = T_c(u)`, :math:`\partial \tilde L / \partial u`.

All repetitions run in one jitted call, ``jax.vmap`` over repetitions of ``jax.grad`` of
``elbo.loss``; when ``num_reps * num_particles`` exceeds ``chunk_particles`` the repetitions run in
equal chunks, ``jax.lax.map`` over chunks of ``jax.vmap``, to bound memory (the last chunk is padded
with extra repetitions that are dropped, so that one loop body is compiled). The compiled function is cached
by ``elbo`` (by value: its class and options, so a fresh ELBO with the same options reuses it),
``model`` and ``guide`` (by identity), the non-array arguments (by value), ``num_reps`` and
``chunk_particles`` (through the chunking) and the shapes and dtypes of the array arguments and
parameters: a new model or guide object, other ELBO options, other shapes or other non-array
arguments compile again.
"""

from __future__ import annotations

import copy
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import numpy as np
from jax import random
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform, biject_to
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import ELBO
from numpyro.infer.util import transform_fn

from ..choice import Choice, measure_and_choose
from ..stats import MIN_REPS, GradientStats, measure_each
from .relax import is_control

_ARRAY = object()
"""Marks where an array argument goes back into the model's arguments (see :func:`_split_static`)."""


def _split_static(tree: Any) -> tuple[list, tuple]:
    """Split ``tree`` into its array leaves (traced) and a hashable layout holding everything else
    (passed to ``jit`` as static, so Python numbers that set shapes keep working)."""
    leaves, treedef = jax.tree.flatten(tree)
    is_array = [isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves]
    arrays = [x for x, a in zip(leaves, is_array) if a]
    return arrays, (treedef, tuple(_ARRAY if a else x for x, a in zip(leaves, is_array)))


def _merge(layout: tuple, arrays: list) -> Any:
    treedef, static = layout
    it = iter(arrays)
    return treedef.unflatten([next(it) if x is _ARRAY else x for x in static])


def init_params(
    model: Callable, guide: Callable, rng_key: jax.Array, *args: Any, params: Mapping | None = None, **kwargs: Any
) -> tuple[dict[str, jax.Array], dict[str, Transform]]:
    """Constrained values and constraint transforms of every param of ``guide`` and ``model``.

    Values are those in ``params``, else the initial ones that ``SVI(model, guide, ...).init(rng_key,
    *args, **kwargs)`` draws (same key splitting; a guide's param overrides a model's of the same name).
    Params of RELAX's controls in ``params`` that the guide does not declare are ignored (another
    guide's, at the same parameters).
    """
    params = dict(params or {})
    _, model_key, guide_key = random.split(rng_key, 3)
    guide_trace = trace(substitute(seed(guide, guide_key), data=params)).get_trace(*args, **kwargs)
    model = substitute(replay(seed(model, model_key), guide_trace), data=params)
    model_trace = trace(model).get_trace(*args, **kwargs)
    values, transforms = {}, {}
    for site in [*model_trace.values(), *guide_trace.values()]:
        if site["type"] == "param":
            values[site["name"]] = site["value"]
            transforms[site["name"]] = biject_to(site["kwargs"].get("constraint", constraints.real))
    unknown = {name for name in set(params) - set(values) if not is_control(name)}  # (another guide's controls)
    if unknown:
        raise ValueError(f"params {sorted(unknown)} are not param sites of the model or guide: {sorted(values)}")
    return values, transforms


@partial(jax.jit, static_argnames=("elbo", "model", "guide", "layout", "chunks"))
def _gradient_samples(
    keys: jax.Array,
    unconstrained: dict[str, jax.Array],
    transforms: dict[str, Transform],
    arrays: list,
    held: dict[str, jax.Array],
    *,
    elbo: ELBO,
    model: Callable,
    guide: Callable,
    layout: tuple,
    chunks: int,
) -> dict[str, jax.Array]:
    """One gradient estimate per key, ``{name: array (len(keys), *shape)}``, in ``chunks`` passes; the
    ``held`` params (RELAX's controls) enter the loss as they are, undifferentiated."""
    args, kwargs = _merge(layout, arrays)

    def estimate(key: jax.Array) -> dict[str, jax.Array]:
        def loss(u: dict[str, jax.Array]) -> jax.Array:
            return elbo.loss(key, {**held, **transform_fn(transforms, u)}, model, guide, *args, **kwargs)

        return jax.grad(loss)(unconstrained)

    if chunks == 1:
        return jax.vmap(estimate)(keys)
    grads = jax.lax.map(jax.vmap(estimate), keys.reshape(chunks, -1, *keys.shape[1:]))
    return jax.tree.map(lambda g: g.reshape(-1, *g.shape[2:]), grads)


PARTICLE_CHUNK = 2**16
"""Most particles in one compiled pass of a multi-particle estimate taken particle by particle
(:func:`_particle_samples`; fewer where the parameters are large, so that a pass's per-particle gradients
stay under ``chunk_particles`` numbers): one size for every ``num_particles``, so one compilation serves
them all."""


def _independent_particles(elbo: ELBO) -> bool:
    """Whether ``elbo``'s estimate is the mean of independent one-particle estimates (this package's ELBOs
    without a baseline that compares particles and without coupled draws)."""
    from .elbo import EstimatorELBO

    return (
        isinstance(elbo, EstimatorELBO) and elbo.num_particles > 1 and elbo.noise is None
        and (elbo.baseline is None or not elbo.baseline.needs_particles)
    )


def _particle_samples(
    key: jax.Array, elbo: ELBO, model: Callable, guide: Callable, unconstrained: dict, transforms: dict,
    arrays: list, held: dict, layout: tuple, num_reps: int, chunk_particles: int,
) -> dict[str, np.ndarray]:
    """Each repetition's gradient as the mean of ``elbo.num_particles`` one-particle estimates, computed
    in passes of the same size by one compiled function whatever the number of particles (the last pass
    padded with particles that are dropped; see :data:`PARTICLE_CHUNK`)."""
    one = copy.copy(elbo)
    one.num_particles = 1
    n = elbo.num_particles
    total = num_reps * n
    size = sum(int(np.prod(np.shape(u))) for u in jax.tree.leaves(unconstrained)) or 1
    chunk = min(PARTICLE_CHUNK, max(256, chunk_particles // size))
    passes = -(-total // chunk)
    keys = random.split(key, passes * chunk)
    # sliced on the host: slicing a JAX array compiles an operation for every new shape and offset
    impl = random.key_impl(keys) if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) else None
    data = np.asarray(keys if impl is None else random.key_data(keys))
    sums = {name: np.zeros((num_reps, *np.shape(u))) for name, u in unconstrained.items()}
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        pass_keys = data[start : start + chunk]
        if impl is not None:
            pass_keys = random.wrap_key_data(pass_keys, impl=impl)
        grads = _gradient_samples(pass_keys, unconstrained, transforms, arrays, held, elbo=one, model=model,
                                  guide=guide, layout=layout, chunks=1)
        # particles run in order, so each repetition's in this pass are one run of rows: sum each run
        runs = np.concatenate(([0], np.arange((start // n + 1) * n, stop, n) - start))
        reps = slice(start // n, start // n + len(runs))
        for name, g in grads.items():
            sums[name][reps] += np.add.reduceat(np.asarray(g, dtype=np.float64)[: stop - start], runs, axis=0)
    return {name: value / n for name, value in sums.items()}


def gradient_variance(
    elbo: ELBO,
    model: Callable,
    guide: Callable,
    *args: Any,
    params: Mapping[str, jax.Array] | None = None,
    num_reps: int = 100,
    seed: int | jax.Array = 0,
    confidence: float = 0.95,
    chunk_particles: int = 2**22,
    **kwargs: Any,
) -> GradientStats:
    """Mean, variance, confidence interval and SNR of ``elbo``'s gradient estimate, per parameter.

    :param elbo: a :class:`~ppl_reparam.numpyro.ScoreFunctionELBO` /
        :class:`~ppl_reparam.numpyro.PathwiseELBO`, or any NumPyro ELBO (its ``loss`` is differentiated
        as SVI does). Each estimate uses ``elbo.num_particles`` samples.
    :param model, guide, args, kwargs: as for ``SVI``. Array arguments are traced; other values
        (Python numbers, strings) are compiled in, as ``svi.run`` does.
    :param params: constrained parameter values, as ``svi.get_params(state)`` returns; a param left
        out takes its initial value (default: all initial, as ``SVI.init(PRNGKey(seed))`` draws them).
        The params of RELAX's controls (``relax.<site>.<part>``, :mod:`ppl_reparam.numpyro.relax`) are
        used as they are and not measured; a :class:`~ppl_reparam.numpyro.RelaxELBO`'s guide that does not
        declare them is given them (:meth:`~ppl_reparam.numpyro.RelaxELBO.with_controls`, their initial
        values unless ``params`` holds them), and with ``relax_fit=N`` they are first fitted for ``N`` steps
        (:meth:`~ppl_reparam.numpyro.RelaxELBO.fit_controls`, draws from the seed; not timed).
    :param num_reps: independent estimates drawn (at least 5).
    :param seed: an integer, or a JAX PRNG key of any implementation, for the initial values and the
        draws.
    :param confidence: level of the variance intervals (Bonett's, see :mod:`ppl_reparam.stats`).
    :param chunk_particles: most particles in one vectorized pass (memory bound). An estimate of
        several independent particles (this package's ELBOs without a leave-one-out baseline or coupled
        draws) is the mean of one-particle estimates, drawn in passes of one size whatever
        ``num_particles``, so that one compilation serves every number of particles; then
        ``chunk_particles`` bounds the per-particle gradients a pass holds.

    ``seconds`` in the result includes compilation on the first call for given objects and shapes.
    """
    if num_reps < MIN_REPS:
        raise ValueError(f"num_reps must be at least {MIN_REPS}, got {num_reps}")
    if chunk_particles < 1:
        raise ValueError(f"chunk_particles must be positive, got {chunk_particles}")
    start = time.perf_counter()
    key = random.PRNGKey(seed) if isinstance(seed, numbers.Integral) else seed
    values, transforms = init_params(model, guide, key, *args, params=params, **kwargs)
    if getattr(elbo, "estimator", None) == "relax" and not any(is_control(name) for name in values):
        guide = elbo.with_controls(guide)  # (a guide that declares them, substituted or not, is kept)
        values, transforms = init_params(model, guide, key, *args, params=params, **kwargs)
    if getattr(elbo, "relax_fit", 0) and any(is_control(name) for name in values):
        began = time.perf_counter()
        values = elbo.fit_controls(random.fold_in(key, 1), values, model, guide, *args, steps=elbo.relax_fit,
                                   **kwargs)
        start += time.perf_counter() - began  # (a setup, not timed)
    held = {name: values.pop(name) for name in list(values) if is_control(name)}
    transforms = {name: transforms[name] for name in values}
    unconstrained = transform_fn(transforms, values, invert=True)
    arrays, layout = _split_static((args, kwargs))
    if _independent_particles(elbo):
        samples = _particle_samples(random.split(key, 3)[0], elbo, model, guide, unconstrained, transforms, arrays,
                                    held, layout, num_reps, chunk_particles)
    else:
        chunks = -(-num_reps // max(1, chunk_particles // elbo.num_particles))
        keys = random.split(random.split(key, 3)[0], -(-num_reps // chunks) * chunks)
        grads = _gradient_samples(
            keys, unconstrained, transforms, arrays, held, elbo=elbo, model=model, guide=guide, layout=layout,
            chunks=chunks,
        )
        samples = {name: np.asarray(value[:num_reps]) for name, value in grads.items()}
    seconds = time.perf_counter() - start
    return GradientStats.from_samples(samples, elbo.num_particles, seconds, confidence)


def compare_estimators(
    model: Callable,
    guide: Callable,
    elbos: Mapping[str, ELBO],
    *args: Any,
    num_reps: int = 100,
    seed: int | jax.Array = 0,
    **kwargs: Any,
) -> dict[str, GradientStats]:
    """:func:`gradient_variance` of each named ELBO on the same model, guide, parameter values and
    seed; write the result with :mod:`ppl_reparam.report`. The keyword arguments ``params``,
    ``confidence`` and ``chunk_particles`` go to :func:`gradient_variance`, the others to the model
    and guide."""
    options = ("params", "confidence", "chunk_particles")
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
