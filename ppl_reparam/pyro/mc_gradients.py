r"""Per-sample Monte Carlo gradients of an expectation in torch: the score-function and pathwise
estimators of :mod:`ppl_reparam.mc_gradients` (maths and references there), one gradient per sample.

How per-sample Jacobians come out of one backward pass: ``params`` (P,) is copied into ``num_samples``
identical rows (num_samples, P), each a leaf that requires grad, and ``dist_builder(rows)`` builds a
batch of ``num_samples`` distributions, drawing one sample from each. Sample ``i`` and its value
depend on row ``i`` only, so the gradient of :math:`\sum_i \hat f_i` w.r.t. the rows is, row by row,
the per-sample Jacobian. This needs ``dist_builder`` to map a ``(..., P)`` tensor of parameter rows to
a distribution of batch shape ``(...)`` without mixing rows (e.g. ``lambda p: Normal(p[..., 0],
p[..., 1])``), and ``function`` to map samples ``(num_samples, *event_shape)`` to values
``(num_samples,)``.

Sampling happens under ``torch.random.fork_rng`` seeded with ``seed``: the same seed gives the same
numbers, and the caller's global RNG state is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Distribution

from .rng import seed_torch

Function = Callable[[torch.Tensor], torch.Tensor]
DistBuilder = Callable[[torch.Tensor], Distribution]


def _rows(params: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``num_samples`` leaf copies of the 1-D ``params``, shape (num_samples, P), requiring grad."""
    if params.dim() != 1:
        raise ValueError(f"params must be a 1-D tensor of P parameters, got shape {tuple(params.shape)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    return params.detach().unsqueeze(0).repeat(num_samples, 1).requires_grad_(True)


def _batch(dist_builder: DistBuilder, rows: torch.Tensor) -> Distribution:
    """The batch of distributions, one per row, with its batch shape checked."""
    d = dist_builder(rows)
    if tuple(d.batch_shape) != (rows.shape[0],):
        raise ValueError(
            f"dist_builder must map parameter rows (N, P) to a distribution of batch shape (N,); "
            f"got batch shape {tuple(d.batch_shape)} for rows {tuple(rows.shape)}"
        )
    return d


def _values(function: Function, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``function(x)`` with its shape checked: one value per sample."""
    values = function(x)
    if tuple(values.shape) != (num_samples,):
        raise ValueError(f"function must return one value per sample, shape ({num_samples},); "
                         f"got {tuple(values.shape)}")
    return values


def _jacobian(total: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed per-sample values w.r.t. the rows: the per-sample Jacobians (zero
    where a value does not depend on a parameter)."""
    (grad,) = torch.autograd.grad(total, rows, allow_unused=True, materialize_grads=True)
    return grad


def score_function_jacobians(
    function: Function,
    dist_builder: DistBuilder,
    params: torch.Tensor,
    num_samples: int,
    *,
    seed: int,
) -> torch.Tensor:
    r"""Per-sample score-function gradients :math:`f(x_i)\,\nabla_\theta \log q(x_i;\theta)`, shape
    ``(num_samples, P)``; :math:`x_i` is drawn with ``sample()``, so no gradient flows through it.
    Unbiased for :math:`\nabla_\theta E_q[f(x)]` whenever ``q`` has a log density differentiable in
    :math:`\theta` (discrete ones included)."""
    rows = _rows(params, num_samples)
    with torch.random.fork_rng(devices=[]):
        seed_torch(seed)
        d = _batch(dist_builder, rows)
        x = d.sample()
    values = _values(function, x, num_samples).detach()
    return _jacobian((values * d.log_prob(x)).sum(), rows)


def pathwise_jacobians(
    function: Function,
    dist_builder: DistBuilder,
    params: torch.Tensor,
    num_samples: int,
    *,
    seed: int,
) -> torch.Tensor:
    r"""Per-sample pathwise gradients :math:`\nabla_\theta f(x_i(\theta))` with :math:`x_i` from
    ``rsample()``, shape ``(num_samples, P)``. Raises ``ValueError`` naming the distribution when it
    has no ``rsample`` (e.g. Bernoulli, Poisson): use :func:`score_function_jacobians` there.

    Unbiased when ``f`` is differentiable and the sample is a differentiable function of the
    parameters; a straight-through distribution (e.g. Pyro's ``RelaxedBernoulliStraightThrough``)
    returns a discrete sample with the relaxed sample's gradient, a biased estimate by design."""
    rows = _rows(params, num_samples)
    with torch.random.fork_rng(devices=[]):
        seed_torch(seed)
        d = _batch(dist_builder, rows)
        if not d.has_rsample:
            raise ValueError(f"{type(d).__name__} has no rsample, so no pathwise gradient; "
                             "use score_function_jacobians")
        x = d.rsample()
    return _jacobian(_values(function, x, num_samples).sum(), rows)


def relaxed_pair(logits: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(b, z, z_tilde, p)``: the bits, their logistic relaxation and its conditional resample given the
    bits (:mod:`ppl_reparam.mc_gradients`), differentiable in ``logits``."""
    p = torch.sigmoid(logits)
    z = logits + torch.log(u) - torch.log1p(-u)
    b = (z > 0).to(logits.dtype).detach()
    v_cond = torch.where(b > 0, 1 - p + v * p, v * (1 - p))
    z_tilde = logits + torch.log(v_cond) - torch.log1p(-v_cond)
    return b, z, z_tilde, p


def gumbel_pair(logits: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(b, z, z_tilde)``: the category ``b = argmax z`` of the Gumbel perturbation ``z`` of ``logits``
    (categories along the last dim) and the conditional resample ``z_tilde ~ p(z | b)``
    (:mod:`ppl_reparam.mc_gradients`), differentiable in ``logits``."""
    theta = torch.log_softmax(logits, -1)
    z = theta - torch.log(-torch.log(u))
    b = z.argmax(-1).detach()
    at_b = torch.nn.functional.one_hot(b, logits.shape[-1]).bool()
    log_e_v = torch.log(-torch.log(v))  # log of the Exp(1) variates -log v
    top = -log_e_v.gather(-1, b.unsqueeze(-1))  # the max: Gumbel at logsumexp(theta) = 0
    z_tilde = torch.where(at_b, top, -torch.logaddexp(log_e_v - theta, -top))
    return b, z, z_tilde


def relax_jacobians(
    function: Function,
    control: Function,
    logits: torch.Tensor,
    num_samples: int,
    *,
    seed: int,
) -> torch.Tensor:
    r"""Per-sample RELAX gradients of :math:`E[f(b)]`, :math:`b_j \sim \mathrm{Bernoulli}(\sigma(\theta_j))`
    independent, in the logits :math:`\theta` (P,), shape ``(num_samples, P)``
    (:mod:`ppl_reparam.mc_gradients`). ``function`` maps bits ``(num_samples, P)`` to values
    ``(num_samples,)``; ``control`` maps relaxed logits ``(num_samples, P)`` to ``(num_samples,)``,
    differentiably. Unbiased for any ``control``."""
    rows = _rows(logits, num_samples)
    with torch.random.fork_rng(devices=[]):
        seed_torch(seed)
        u = torch.rand(rows.shape, dtype=rows.dtype).clamp(1e-12, 1 - 1e-12)
        v = torch.rand(rows.shape, dtype=rows.dtype).clamp(1e-12, 1 - 1e-12)
    b, z, z_tilde, p = relaxed_pair(rows, u, v)
    c_tilde = _values(control, z_tilde, num_samples)
    weight = (_values(function, b, num_samples) - c_tilde).detach()
    score = weight.unsqueeze(-1) * (b - p).detach()
    return score + _jacobian((_values(control, z, num_samples) - c_tilde).sum(), rows)


def rebar_jacobians(
    function: Function,
    logits: torch.Tensor,
    num_samples: int,
    *,
    seed: int,
    temperature: float = 0.5,
    eta: float = 1.0,
) -> torch.Tensor:
    r""":func:`relax_jacobians` with REBAR's control variate :math:`\eta\, f(\sigma(z/\lambda))`
    (``function`` must then accept relaxed values in (0, 1) as well as bits)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return relax_jacobians(
        function, lambda z: eta * function(torch.sigmoid(z / temperature)), logits, num_samples, seed=seed
    )
