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

The third estimator, the measure-valued gradient, needs no autodiff and is written once, in NumPy:
:mod:`ppl_reparam.measure_valued`.

Survey: Mohamed, Rosca, Figurnov and Mnih, "Monte Carlo Gradient Estimation in Machine Learning",
JMLR 21(132), 2020, sections 4 and 5. The same seed gives the same numbers; no global random state is
read or changed.
"""
