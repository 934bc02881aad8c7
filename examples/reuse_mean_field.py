"""Reuse ppl-reparam's mean-field guide on your own model: eight schools.

The model is the classic hierarchical one (Rubin 1981; Gelman et al., "Bayesian Data Analysis", 3rd ed.,
section 5.5): school j's effect theta_j ~ Normal(mu, tau), observed with a known standard error.
``MeanField(model)`` reads the model's latent sites and gives each an independent factor in a family
with the site's support: Normal for ``mu`` and ``theta``; for ``tau`` (positive) LogNormal by default,
here Gamma by ``families``. ``estimators={"tau": "score"}`` samples ``tau`` with the score-function
estimator (its baseline: leave-one-out over the 8 particles) while the ELBO differentiates the others
pathwise. The model is not touched. (A mean-field guide ignores the posterior correlation of mu, tau
and theta, so it understates their spread: the example shows the wiring, not the best guide.)

    python examples/reuse_mean_field.py
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI
from pyro.optim import ClippedAdam

from ppl_reparam.pyro import MeanField, PathwiseELBO

EFFECTS = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
STANDARD_ERRORS = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def model(effects: torch.Tensor = EFFECTS, standard_errors: torch.Tensor = STANDARD_ERRORS) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(effects)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, standard_errors), obs=effects)


def main(num_steps: int = 600, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fit the guide; print and return each site's posterior mean and standard deviation under it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = MeanField(model, families={"tau": "gamma"}, estimators={"tau": "score"})
    elbo = PathwiseELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1, baseline="rloo")
    svi = SVI(model, guide, ClippedAdam({"lr": 0.2, "lrd": 0.1 ** (1 / num_steps)}), elbo)
    for _ in range(num_steps):
        svi.step()
    summary = {}
    for site in ("mu", "tau", "theta"):
        q = guide.distribution(site)
        summary[site] = (q.mean.detach(), q.variance.sqrt().detach())
        mean, sd = (", ".join(f"{v:.2f}" for v in t.reshape(-1).tolist()) for t in summary[site])
        print(f"{site:5s} {type(q).__name__:8s} mean {mean}\n{'':14s} sd   {sd}")
    return summary


if __name__ == "__main__":
    main()
