r"""``ppl-reparam vae``: train a VAE on binarized digits with each gradient estimator; compare their variance.

A variational autoencoder trained under Pyro's SVI with the score-function or the pathwise
gradient estimator, and the variance of both measured on it.

The model and guide are Kingma and Welling's ("Auto-Encoding Variational Bayes", ICLR 2014):
:mod:`ppl_reparam.models.vae` with :class:`~ppl_reparam.pyro.AmortizedNormal`. ELBOs are in nats per
image: the training ELBO averages the epoch's minibatch estimates; the test ELBO is a fresh estimate
with ``--test-particles`` pathwise particles per image (:func:`~ppl_reparam.pyro.training.evaluate_elbo`).

``--compare`` trains one model per estimator from the same initial weights, and at epoch 0, every
``--variance-every`` epochs and the last it measures every estimator's gradient on every model's
current parameters and one fixed training batch, ``--variance-reps`` repetitions each: total
variance and mean SNR of the encoder's and the decoder's parameters, and the ratio of the score
function's total variance to the pathwise one's with a bootstrap-t interval (:mod:`ppl_reparam.stats`).
Both estimators are unbiased, so their means must agree within standard errors (``means_mean_z2``
about 1); on the decoder they are the same estimator (the decoder's gradient never goes through the
guide's sample), so the ratio there should cover 1.

Files in ``--out``: ``history.csv``, ``variance.csv``, ``comparison.csv``, ``results.json``,
``elbo.png``, ``variance.png``, ``images.png`` and ``checkpoint.pt`` (atomic, every epoch; ``--resume``).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import markdown_table, write_csv, write_json
from .stats import MIN_REPS

if TYPE_CHECKING:
    from .pyro.training import VAEResult

ESTIMATORS = ("pathwise", "score")


@dataclass(frozen=True)
class VAEConfig:
    """Settings of a ``vae`` run (the command's options); checked on construction (ValueError)."""

    estimators: tuple[str, ...] = ("pathwise",)
    compare: bool = False
    analytic_kl: bool = False
    epochs: int = 50
    batch_size: int = 100
    latent_dim: int = 8
    hidden: tuple[int, ...] = (128,)
    lr: float = 1e-3
    num_particles: int = 1
    data: str = "digits"
    seed: int = 0
    dynamic_binarization: bool = False
    variance_reps: int = 100
    variance_every: int = 5
    test_particles: int = 100

    def __post_init__(self) -> None:
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown or not self.estimators or len(set(self.estimators)) < len(self.estimators):
            raise ValueError(
                f"estimators {list(self.estimators)}: give each of {', '.join(ESTIMATORS)} at most once"
            )
        if len(self.estimators) > 1 and not self.compare:
            raise ValueError(f"several estimators {list(self.estimators)} need --compare")
        positive = {
            "epochs": self.epochs, "batch size": self.batch_size, "latent dim": self.latent_dim,
            "num particles": self.num_particles, "variance every": self.variance_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden layer sizes must be positive, got {list(self.hidden)}")
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")
        if self.variance_reps and self.variance_reps < MIN_REPS:
            raise ValueError(f"variance reps must be 0 (off) or at least {MIN_REPS}, got {self.variance_reps}")
        if self.test_particles < 2:
            raise ValueError(f"test particles must be at least 2, got {self.test_particles}")

    def key(self) -> dict[str, Any]:
        """The settings as a dict, stored in checkpoints to check ``--resume``."""
        return asdict(self)

    @property
    def test_elbo_label(self) -> str:
        return f"test_elbo_pathwise_{self.test_particles}particles"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def config_from_args(args: argparse.Namespace) -> VAEConfig:
    default = "pathwise,score" if args.compare else "pathwise"
    estimators = tuple(e.strip() for e in (args.estimator or default).split(",") if e.strip())
    return VAEConfig(
        estimators=estimators, compare=args.compare, analytic_kl=args.analytic_kl, epochs=args.epochs,
        batch_size=args.batch_size, latent_dim=args.latent_dim, hidden=args.hidden, lr=args.lr,
        num_particles=args.num_particles, data=args.data, seed=args.seed,
        dynamic_binarization=args.dynamic_binarization, variance_reps=args.variance_reps,
        variance_every=args.variance_every, test_particles=args.test_particles,
    )


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the block, like Ctrl-C (main thread only)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """At most ``n`` threads for torch's CPU kernels and for NumPy's BLAS in the block. The
    networks and the bootstrap's matrices here are small: on a busy 2-core machine two threads
    made an SVI step 25 times slower than one (thread hand-offs, not arithmetic)."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(previous)


def write_results(result: VAEResult, config: VAEConfig, out: Path) -> list[Path]:
    """history.csv, variance.csv, comparison.csv, results.json and the figures, each atomically."""
    from .plots import plot_elbo_curves, plot_group_variance, plot_image_grid

    history = [
        {"epoch": h["epoch"], "estimator": h["estimator"], "train_elbo": h["train_elbo"],
         config.test_elbo_label: h["test_elbo"], "test_elbo_se": h["test_elbo_se"], "seconds": h["seconds"]}
        for h in result.history
    ]
    files = [write_csv(history, out / "history.csv")]
    if result.variance:
        files.append(write_csv(result.variance, out / "variance.csv"))
    if result.comparison:
        files.append(write_csv(result.comparison, out / "comparison.csv"))
    files.append(
        write_json(
            {
                "config": config.key(),
                "elbo_units": "nats per image",
                "test_elbo_estimator": f"PathwiseELBO, {config.test_particles} particles per image",
                "num_train": result.num_train,
                "num_test": result.num_test,
                "history": history,
                "variance": result.variance,
                "comparison": result.comparison,
            },
            out / "results.json",
        )
    )
    files.append(plot_elbo_curves(result.history, out / "elbo.png", f"test ({config.test_particles} particles)"))
    if result.variance:
        files.append(plot_group_variance(result.variance, out / "variance.png"))
    files.append(plot_image_grid(result.images, out / "images.png"))
    return files


def summary(result: VAEResult, config: VAEConfig) -> str:
    """The printed tables: final ELBOs, and the score/pathwise comparison at the first and last
    measured epochs (every measured epoch is in comparison.csv)."""
    last = [h for h in result.history if h["epoch"] == config.epochs]
    lines = [
        markdown_table(
            [{"estimator": h["estimator"], "epoch": h["epoch"], "train ELBO": f"{h['train_elbo']:.3f}",
              f"test ELBO ({config.test_particles} particles)": f"{h['test_elbo']:.3f} ± {h['test_elbo_se']:.3f}"}
             for h in last]
        )
    ]
    ends = {result.comparison[0]["epoch"], result.comparison[-1]["epoch"]} if result.comparison else set()
    rows = [
        {"epoch": c["epoch"], "trained with": c["trained_with"], "group": c["group"],
         "ratio": f"{c['variance_ratio']:.4g}", "95% CI": f"[{c['ratio_ci_low']:.4g}, {c['ratio_ci_high']:.4g}]",
         "means: max |z| (Bonferroni bound)": f"{c['means_max_abs_z']:.2f} ({c['means_bonferroni_z']:.2f})"}
        for c in result.comparison if c["epoch"] in ends
    ]
    if rows:
        lines += ["", "Score-function / pathwise total gradient variance on the same parameters, "
                  f"{config.variance_reps} repetitions each, 95% bootstrap-t CI:", markdown_table(rows)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    out = Path(args.out)
    with _threads(args.threads), _sigterm_as_interrupt():
        from .pyro.training import train_vae

        result = train_vae(config, out, resume=args.resume, progress=False if args.quiet else None)
    print(f"VAE on {config.data}: {result.num_train} training / {result.num_test} test images, "
          f"{'-'.join(map(str, (result.images[0][1].shape[1], *config.hidden, config.latent_dim)))}; "
          f"ELBO in nats per image, test ELBO by PathwiseELBO with {config.test_particles} particles")
    print(summary(result, config))
    files = write_results(result, config, out)
    print("wrote " + ", ".join(str(f) for f in files))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "vae",
        help="train a VAE on binarized digits with either estimator; compare their gradient variance",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--estimator", default=None,
                        help="pathwise or score; with --compare a comma list. None: pathwise, or with "
                        "--compare pathwise,score")
    parser.add_argument("--compare", action="store_true",
                        help="one model per estimator from the same initial weights; measure every estimator on each")
    parser.add_argument("--analytic-kl", action="store_true",
                        help="closed-form KL (estimator B) instead of Monte Carlo (A)")
    parser.add_argument("--epochs", type=_at_least(1), default=VAEConfig.epochs, help="passes over the data")
    parser.add_argument("--batch-size", type=_at_least(1), default=VAEConfig.batch_size, help="minibatch size")
    parser.add_argument("--latent-dim", type=_at_least(1), default=VAEConfig.latent_dim, help="size of z")
    parser.add_argument("--hidden", type=_int_list, default=",".join(map(str, VAEConfig.hidden)),
                        help="hidden layer sizes, comma-separated (encoder order; the decoder mirrors them)")
    parser.add_argument("--lr", type=float, default=VAEConfig.lr, help="Adam learning rate")
    parser.add_argument("--num-particles", type=_at_least(1), default=VAEConfig.num_particles,
                        help="samples per gradient estimate")
    parser.add_argument("--data", default=VAEConfig.data, help="digits, or a path to an MNIST IDX or .npz file")
    parser.add_argument("--seed", type=int, default=VAEConfig.seed,
                        help="seeds the split, the initial weights and every random stream")
    parser.add_argument("--out", default="results/vae", help="folder for results, figures and checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    parser.add_argument("--variance-reps", type=_at_least(0), default=VAEConfig.variance_reps,
                        help=f"gradient estimates per variance measurement (0: none; else at least {MIN_REPS})")
    parser.add_argument("--variance-every", type=_at_least(1), default=VAEConfig.variance_every,
                        help="epochs between variance measurements (also at epoch 0 and the last)")
    parser.add_argument("--test-particles", type=_at_least(2), default=VAEConfig.test_particles,
                        help="pathwise particles per test image for the test ELBO")
    parser.add_argument("--dynamic-binarization", action="store_true",
                        help="draw fresh Bernoulli training pixels every epoch")
    parser.add_argument("--threads", type=_at_least(1), default=1,
                        help="CPU threads for torch and BLAS (small networks run fastest on one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
