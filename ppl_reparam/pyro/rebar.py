r"""REBAR and RELAX at a discrete guide site of a Pyro ELBO (Tucker, Mnih, Maddison, Lawson and
Sohl-Dickstein 2017; Grathwohl, Choi, Wu, Roeder and Duvenaud 2018).

The site's draw is a deterministic function of a relaxation :math:`z` whose uniforms
:class:`~ppl_reparam.pyro.handlers.EstimatorDistribution` keeps: Bernoulli bits :math:`b = H(z)`,
:math:`z = \theta + \log u - \log(1 - u)`; a category :math:`b = \arg\max_k z_k`, :math:`z = \theta -
\log(-\log u)` (Gumbel-max). With :math:`\tilde z \sim p(z \mid b)`, the conditional resample from a
second uniform :math:`v`, differentiable in the logits :math:`\theta`
(:func:`~ppl_reparam.pyro.mc_gradients.relaxed_pair`, :func:`~ppl_reparam.pyro.mc_gradients.gumbel_pair`),
the gradient of :math:`E[f(b)]` is estimated by

.. math:: \big(f(b) - c(\tilde z)\big)\, \nabla \log q(b) + \nabla c(z) - \nabla c(\tilde z),

unbiased for any control :math:`c` differentiable in :math:`z` (:mod:`ppl_reparam.mc_gradients`).
:math:`f(b)` is the site's cost as for a score-function site (its downstream terms, element by element
within its plates).

- REBAR's control is :math:`c(x) = \eta\, f(\sigma(x / \lambda))`, the site's own cost at the relaxed
  bits, computed by rerunning guide and model with the site set to :math:`\sigma(x/\lambda)` (the sites
  drawn before it replayed without gradient, those after it from random numbers shared by :math:`c(z)`
  and :math:`c(\tilde z)`; the model must accept values in (0, 1) for the bits, as a VAE's decoder does,
  and is run without validation there), with :math:`\eta` and :math:`\lambda` fixed.
- RELAX's control adds a learned network and learns :math:`\eta` and :math:`\lambda` too
  (:mod:`ppl_reparam.pyro.relax`).

The gradient of :math:`c(z) - c(\tilde z)` reaches every parameter the control uses: through
:math:`\theta` it is the estimator's correction; into the model's own parameters (a decoder, through
REBAR's rerun) it has mean zero (:math:`z` and :math:`\tilde z` have the same distribution) and adds
variance there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def site_terms(
    log_q: torch.Tensor,
    cost: torch.Tensor,
    z: torch.Tensor,
    z_tilde: torch.Tensor,
    control: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The surrogate's two parts: :math:`\log q(b)\, \bot(f(b) - c(\tilde z))`, of the shape of
    ``log_q``, and :math:`c(z) - c(\tilde z)`, of the control's shape (its size-1 dims, where a plate's
    elements share the control, are summed once), to add each summed per particle; and
    :math:`c(\tilde z)` (with its gradient, for a control that learns).

    :param log_q: the draw's unscaled log density, with gradient; ``cost`` is :math:`f(b)`, of its shape.
    :param z: the relaxation the draw came from and ``z_tilde`` its conditional resample, both with
        gradient in the logits.
    :param control: :math:`c`: maps a relaxation to a value of a shape that broadcasts against
        ``log_q``, with gradient.
    """
    c_z = control(z)
    c_tilde = control(z_tilde)
    return log_q * (cost - c_tilde).detach(), c_z - c_tilde, c_tilde
