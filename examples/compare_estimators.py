"""Compare gradient estimators on your model in ten lines: the coin of Pyro's SVI tutorial.

Swap in your own model; ``MeanField`` fits any model whose latent sites are real, positive, in
[0, 1] or on a simplex. The Beta guide's pathwise gradient is the implicit reparameterization
gradient (Figurnov, Mohamed and Mnih 2018). ``method="loop"`` measures by reverse mode: torch's
Beta / Gamma / Dirichlet samplers have no forward-mode derivative.

    python examples/compare_estimators.py
"""

from __future__ import annotations

from ppl_reparam import report
from ppl_reparam.models import beta_bernoulli
from ppl_reparam.pyro import MeanField, PathwiseELBO, ScoreFunctionELBO, compare_estimators


def main(num_reps: int = 200, seed: int = 0) -> str:
    """Print and return the Markdown table of gradient statistics per estimator and parameter."""
    guide = MeanField(beta_bernoulli.model)
    options = dict(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    elbos = {
        "score": ScoreFunctionELBO(**options),
        "score + RLOO baseline": ScoreFunctionELBO(**options, baseline="rloo"),
        "pathwise": PathwiseELBO(**options),
    }
    results = compare_estimators(beta_bernoulli.model, guide, elbos, num_reps=num_reps, seed=seed, method="loop")
    table = report.markdown_table(report.gradient_rows(results))
    print(table)
    return table


if __name__ == "__main__":
    main()
