"""Watch the gradient noise of your own SVI loop: a VarianceMonitor on the digits VAE.

The loop below is a plain Pyro SVI loop, trained pathwise; one line in it calls the monitor, which every
``every`` steps measures, at the parameters of that moment, the encoder's and decoder's gradient
variance and signal-to-noise ratio under two estimators, the score function and the pathwise one, on
a fixed batch. The loop runs exactly as it would without the monitor (same parameters bit for bit:
tests/test_monitor.py). ``results/monitor/variance.csv`` and ``variance.png`` are rewritten after each
measurement: open the figure while it trains. The NumPyro monitor is the same class in
``ppl_reparam.numpyro``, called as ``monitor(step, svi.get_params(state), x)``.

    python examples/variance_monitor.py
"""

from __future__ import annotations

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from ppl_reparam.data import load_dataset
from ppl_reparam.models.vae import make_vae
from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO, VarianceMonitor


def main(steps: int = 301, every: int = 100, num_reps: int = 100, out: str = "results/monitor", seed: int = 0):
    """Train ``steps`` minibatch steps; return the monitor's rows."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = load_dataset("digits", seed=seed)
    train = torch.from_numpy(data.train)
    model, guide = make_vae()
    svi = SVI(model, guide, Adam({"lr": 1e-3}), PathwiseELBO())
    monitor = VarianceMonitor(
        model, guide, {"score": ScoreFunctionELBO(), "pathwise": PathwiseELBO()},
        every=every, num_reps=num_reps, groups={"encoder": ["encoder"], "decoder": ["decoder"]}, out=out, seed=seed,
    )
    fixed = train[:100]  # one batch for every measurement: the spread is the estimator's, not the batch's
    for step in range(steps):
        batch = train[torch.randint(len(train), (100,))]
        svi.step(batch, num_data=len(train))
        monitor(step, fixed, num_data=len(train))
    for row in monitor.rows:
        if row["group"] == "encoder":
            print(f"step {row['step']:4d}  {row['measured']:8s}  encoder variance {row['total_variance']:10.4g}  "
                  f"mean SNR {row['mean_snr']:.3g}")
    return monitor.rows


if __name__ == "__main__":
    main()
