r"""REBAR at a Bernoulli guide site of a Pyro ELBO (Tucker, Mnih, Maddison, Lawson and Sohl-Dickstein 2017).

The site's bits are drawn as :math:`b = H(z)`, :math:`z = \theta + \log u - \log(1 - u)` with
:math:`\theta` the logits and :math:`u` uniform (:class:`~ppl_reparam.pyro.handlers.EstimatorDistribution`
keeps :math:`u`). With :math:`\tilde z \sim p(z \mid b)`, the conditional resample from a second uniform
:math:`v` (:math:`\tilde z = \theta + \log v' - \log(1 - v')`, :math:`v' = 1 - p + v p` where
:math:`b = 1`, :math:`v (1 - p)` where :math:`b = 0`, :math:`p = \sigma(\theta)`: differentiable in
:math:`\theta`), the gradient of :math:`E[f(b)]` is estimated by

.. math:: \big(f(b) - \eta\, c(\tilde z)\big)\, \nabla \log q(b) + \eta\, \nabla c(z) - \eta\, \nabla c(\tilde z),

unbiased for any control :math:`c` (:mod:`ppl_reparam.mc_gradients`); REBAR's is the site's own cost at
the relaxed bits, :math:`c(x) = f(\sigma(x / \lambda))`, computed by rerunning guide and model with the
site set to :math:`\sigma(x/\lambda)` (the sites drawn before it replayed without gradient, those after
it from random numbers shared by :math:`c(z)` and :math:`c(\tilde z)`; the model must accept values in
(0, 1) for the bits, as a VAE's decoder does, and is run without validation there). :math:`f(b)` is the
site's cost as for a score-function site (its downstream terms, element by element within its plates).

The gradient of :math:`\eta (c(z) - c(\tilde z))` reaches every parameter the rerun uses: through
:math:`\theta` it is REBAR's correction; into the model's own parameters (a decoder) it has mean zero
(:math:`z` and :math:`\tilde z` have the same distribution) and adds variance there. :math:`\eta` and
:math:`\lambda` are fixed (``rebar_eta``, ``rebar_temperature``): the papers learn them, or a free-form
control (RELAX, Grathwohl et al. 2018), to minimise the variance, which is not done here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .mc_gradients import relaxed_pair


def site_terms(
    log_q: torch.Tensor,
    cost: torch.Tensor,
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    control: Callable[[torch.Tensor], torch.Tensor],
    eta: float,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The surrogate's two parts: :math:`\log q(b)\, \bot(f(b) - \eta c(\tilde z))`, of the shape of
    ``log_q``, and :math:`\eta (c(z) - c(\tilde z))`, of the control's shape (its size-1 dims, where a
    plate's elements share the control, are summed once); add each summed per particle.

    :param log_q: the bits' unscaled log density, with gradient; ``cost`` is :math:`f(b)`, of its shape.
    :param logits: :math:`\theta` broadcast to the bits' shape, with gradient.
    :param uniforms: the :math:`u` the bits were drawn from.
    :param control: :math:`c`: maps relaxed bits in (0, 1) to the site's cost, of a shape that broadcasts
        against ``log_q``, with gradient.
    """
    finfo = torch.finfo(logits.dtype)
    v = torch.rand_like(uniforms).clamp(finfo.tiny, 1 - finfo.eps)
    _, z, z_tilde, _ = relaxed_pair(logits, uniforms, v)  # its bits are ``bits``: the same uniforms drew them
    c_z = control(torch.sigmoid(z / temperature))
    c_tilde = control(torch.sigmoid(z_tilde / temperature))
    return log_q * (cost - eta * c_tilde).detach(), eta * (c_z - c_tilde)
