r"""Per-sample Monte Carlo gradients of an expectation, in the style of DeepMind's ``mc_gradients``:
the estimators both backends implement (:mod:`ppl_reparam.pyro.mc_gradients`,
:mod:`ppl_reparam.numpyro.mc_gradients`).

``score_function_jacobians`` and ``pathwise_jacobians`` estimate :math:`\nabla_\theta
E_{q(x;\theta)}[f(x)]` for a function ``f`` that does not itself depend on :math:`\theta`, and return one
gradient per sample, shape ``(num_samples, P)``, so that the caller can take the mean (the usual
estimator) or measure the per-sample variance.

- Score function (REINFORCE; Williams 1992, Glynn 1990), valid for any ``q`` with a differentiable
  log density:

  .. math:: \nabla_\theta E_q[f(x)] = E_q[f(x)\,\nabla_\theta \log q(x;\theta)],
            \qquad \hat g_i = f(x_i)\,\nabla_\theta \log q(x_i;\theta),\; x_i \sim q.

- Pathwise (reparameterization; Kingma and Welling 2014, Rezende et al. 2014), for ``q`` with a
  reparameterized sampler, :math:`x = g(\epsilon; \theta)` and a differentiable ``f``:

  .. math:: \nabla_\theta E_q[f(x)] = E_\epsilon[f'(x)\,\nabla_\theta g(\epsilon;\theta)],
            \qquad \hat g_i = \nabla_\theta f(g(\epsilon_i;\theta)).

  For Gamma, Beta and Dirichlet there is no explicit ``g``: both frameworks use implicit
  reparameterization (Figurnov, Mohamed and Mnih, "Implicit Reparameterization Gradients", NeurIPS
  2018), :math:`\nabla_\theta x = -\nabla_\theta F(x;\theta) / q(x;\theta)` with ``F`` the CDF,
  computed without differentiating through the rejection sampler.

- RELAX and REBAR (Grathwohl et al., "Backpropagation through the Void", ICLR 2018; Tucker et al.,
  "REBAR", NeurIPS 2017), for independent Bernoulli bits :math:`b = H(z)`, :math:`z = \theta + \log u -
  \log(1-u)` (logits :math:`\theta`, :math:`u` uniform), with :math:`\tilde z \sim p(z \mid b)` drawn
  by the conditional reparameterization :math:`\tilde z = \theta + \log v' - \log(1 - v')`,
  :math:`v' = v(1-p)` if :math:`b = 0`, :math:`1 - p + vp` if :math:`b = 1` (:math:`p = \sigma(\theta)`,
  :math:`v` uniform), and a control variate :math:`c` differentiable in the relaxed sample:

  .. math:: \hat g = \big(f(b) - c(\tilde z)\big)\,\nabla_\theta \log p(b;\theta)
            + \nabla_\theta c(z) - \nabla_\theta c(\tilde z),
            \qquad \nabla_\theta \log p(b;\theta) = b - p.

  Unbiased for :math:`\nabla_\theta E[f(b)]` for any :math:`c` (the last two terms have equal
  means); REBAR is :math:`c(z) = \eta\, f(\sigma(z/\lambda))`, the Concrete relaxation at temperature
  :math:`\lambda` scaled by :math:`\eta`. Learning :math:`c`, :math:`\eta` or :math:`\lambda` to lower the
  variance (the papers' second half) is left to the caller: these functions take them as given (the Pyro
  ELBO ``RelaxELBO`` learns them). For a categorical draw :math:`b = \arg\max_k z_k`, :math:`z = \theta -
  \log(-\log u)` (Gumbel-max, :math:`\theta` the normalized logits), the conditional resample is
  :math:`\tilde z_b = -\log(-\log v_b)`, :math:`\tilde z_k = -\log(-\log v_k / p_k - \log v_b)` for
  :math:`k \ne b` (Tucker et al., appendix), and the same identity holds with :math:`\log p(b;\theta)`.

The third estimator, the measure-valued gradient, needs no autodiff and is written once, in NumPy:
:mod:`ppl_reparam.measure_valued`.

Survey: Mohamed, Rosca, Figurnov and Mnih, "Monte Carlo Gradient Estimation in Machine Learning",
JMLR 21(132), 2020, sections 4, 5 and 7. The same seed gives the same numbers; no global random state is
read or changed.
"""

import math


def check_rebar_options(temperature: float, eta: float) -> tuple[float, float]:
    """REBAR's :math:`\\lambda` and :math:`\\eta` as floats (the ELBOs' ``rebar_temperature`` and
    ``rebar_eta``); a ValueError unless the temperature is positive and both are finite."""
    temperature, eta = float(temperature), float(eta)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"rebar_temperature must be positive and finite, got {temperature}")
    if not math.isfinite(eta):
        raise ValueError(f"rebar_eta must be finite, got {eta}")
    return temperature, eta
