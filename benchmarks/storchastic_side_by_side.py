"""Side by side with storchastic: the discrete VAE's encoder-gradient variance and time per estimate.

The same model, data and parameters in both libraries: the 64-128-16 Bernoulli VAE of
:mod:`ppl_reparam.models.discrete_vae` at its initial weights (seed 0), the first 100 binarized training
digits, the closed-form KL to the Bernoulli(1/2) prior (storchastic's VAE example adds it as a cost; here
``score+akl``), a Bernoulli likelihood. ppl-reparam: :func:`ppl_reparam.pyro.gradient_variance` of the
spec's ELBO (Pyro SVI's loss, summed over the batch). storchastic: its own estimator on the encoder's
Bernoulli site (``storch.method``), the reconstruction and KL registered as costs over the data plate,
``storch.backward()``; storchastic averages costs over the plate, so its gradients are multiplied by the
batch size (the check below confirms the two estimate the same gradient: their means agree). Estimators:
REINFORCE (``score+akl`` / ``ScoreFunction(n_samples=1)``), leave-one-out over 4 samples
(``score+akl+rloo:4`` / ``ScoreFunction(n_samples=4, baseline_factory="batch_average")``) and RELAX:
storchastic's with its default control network untrained (``RELAX(n_samples=1)``); here ``RelaxELBO``
(``relax+akl``) at its start, where its control is REBAR's (the relaxed cost, λ = 0.5, η = 1, the network's
output 0), and after fitting its control for 300 steps at these parameters (``relax+akl+fit=300``; the
fit is not timed). The two RELAX controls differ, so their rows are not the same estimator. Per-sample
variance: total variance over the encoder's elements x samples per estimate; time per estimate from
``gradient_variance`` (its ``seconds``). One torch thread. storchastic is an optional
extra (``pip install -e '.[bench]'``, AGPL-3.0); without it the script says so and exits. Run:

    .venv/bin/python benchmarks/storchastic_side_by_side.py [--reps 400]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pyro
import torch
from torch.distributions import Bernoulli

from ppl_reparam.data import load_dataset
from ppl_reparam.models.discrete_vae import make_discrete_vae
from ppl_reparam.pyro.specs import make_elbo
from ppl_reparam.pyro.variance import gradient_variance
from ppl_reparam.stats import GroupStats, MeanAgreement, ParamStats

OURS = {"REINFORCE": "score+akl", "RLOO, 4 samples": "score+akl+rloo:4", "RELAX (control at start)": "relax+akl",
        "RELAX (control fitted)": "relax+akl+fit=300"}
SAME = ("REINFORCE", "RLOO, 4 samples")
"""The estimators both libraries implement alike (their means are compared)."""


def ours(model, guide, x: torch.Tensor, reps: int) -> dict[str, tuple[np.ndarray, float, int]]:
    """Each spec's encoder-gradient samples (reps, elements), seconds per estimate and samples per estimate."""
    out = {}
    for label, spec in OURS.items():
        elbo = make_elbo(spec, max_plate_nesting=1)
        stats = gradient_variance(elbo, model, guide, x, num_reps=reps, seed=1, method="loop")
        seconds = stats.seconds / reps
        names = [n for n in stats if n.startswith("encoder")]
        out[label] = (np.concatenate([stats[n].samples.reshape(reps, -1) for n in names], 1), seconds,
                      elbo.num_particles)
    return out


def storchastic(model, guide, x: torch.Tensor, reps: int) -> dict[str, tuple[np.ndarray, float, int]]:
    """The same for storchastic's estimators (gradients times the batch size: see the module)."""
    import storch
    from storch.method import RELAX, ScoreFunction

    methods = {
        "REINFORCE": (lambda: ScoreFunction("z", n_samples=1), 1),
        "RLOO, 4 samples": (lambda: ScoreFunction("z", n_samples=4, baseline_factory="batch_average"), 4),
        "RELAX (untrained control)": (lambda: RELAX("z", n_samples=1, in_dim=(guide.encoder.latent_dim,)), 1),
    }
    params = list(guide.encoder.parameters())
    def decoder(z: torch.Tensor) -> torch.Tensor:
        return model.decoder(z)

    encode, decode = storch.deterministic(guide.encode), storch.deterministic(decoder)

    log_sig = torch.nn.functional.logsigmoid

    def kl_to_half(logits: torch.Tensor) -> torch.Tensor:
        """KL(Bernoulli(logits) || Bernoulli(1/2)), summed over the bits."""
        pi = torch.sigmoid(logits)
        return (pi * log_sig(logits) + (1 - pi) * log_sig(-logits) + np.log(2.0)).sum(-1)

    kl = storch.deterministic(kl_to_half)
    out = {}
    for label, (make, samples) in methods.items():
        method = make()
        torch.manual_seed(2)
        grads, began = [], time.perf_counter()
        for _ in range(reps):
            storch.reset()
            for p in params:
                p.grad = None
            data = storch.denote_independent(x, 0, "data")
            logits_q = encode(data)
            q = Bernoulli(logits=logits_q)
            storch.add_cost(kl(logits_q), "kl")
            z = method(q)
            logits = decode(z.float() if z.dtype == torch.bool else z)
            nll = storch.deterministic(
                lambda lg, xx: -(xx * log_sig(lg) + (1 - xx) * log_sig(-lg)).sum(-1)
            )(logits, data)
            storch.add_cost(nll, "reconstruction")
            storch.backward()
            grads.append(torch.cat([p.grad.detach().reshape(-1) for p in params]).numpy() * len(x))
        out[label] = (np.stack(grads), (time.perf_counter() - began) / reps, samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=400)
    args = parser.parse_args()
    try:
        import storch
    except ImportError as e:
        print(f"storchastic is not installed ({e}); pip install -e '.[bench]' to run this comparison")
        return
    # storchastic's RELAX calls backward(create_graph=True) and torch warns about the reference cycle
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    data = load_dataset("digits")
    x = torch.from_numpy(data.train[:100])
    model, guide = make_discrete_vae()
    # storchastic first: it patches torch (Tensor.gt, .to, ...) when imported, and after RELAX's second
    # derivatives here its own next run fails inside those patches (storch's state, not ours)
    theirs = {("storchastic", k): v for k, v in storchastic(model, guide, x, args.reps).items()}
    rows = {("ppl-reparam", k): v for k, v in ours(model, guide, x, args.reps).items()} | theirs
    print(f"discrete VAE 64-128-16 at its initial weights, batch of 100 digits, {args.reps} estimates each; "
          f"torch {torch.__version__}, pyro {pyro.__version__}, storchastic {getattr(storch, '__version__', '0.3.7')}")
    print(f"  {'library':12s} {'estimator':27s} {'per-sample variance [95% CI]':>36s} {'ms / estimate':>14s}")
    for (library, label), (samples, seconds, k) in rows.items():
        stats = {"encoder": ParamStats.from_samples(samples, k)}
        group = GroupStats.from_stats(stats, ["encoder"], 0.95, seed=0)
        low, high = (v * k for v in group.total_variance_ci)
        print(f"  {library:12s} {label:27s} {group.total_variance * k:12.4g} [{low:10.4g}, {high:10.4g}] "
              f"{1e3 * seconds:14.2f}")
    for label in SAME:
        a, b = rows["ppl-reparam", label][0], rows["storchastic", label][0]
        agree = MeanAgreement.from_stats({"e": ParamStats.from_samples(a, 1)}, {"e": ParamStats.from_samples(b, 1)},
                                         ["e"], 0.95)
        print(f"  same gradient ({label}): max |z| of the mean difference {agree.max_abs_z:.2f} against the "
              f"Bonferroni bound {agree.bonferroni_z:.2f} over {agree.num_elements} elements: "
              f"{'agree' if agree.agrees else 'DISAGREE'}")


if __name__ == "__main__":
    main()
