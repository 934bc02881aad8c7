r"""The rules of both backends' ``MeanField`` guides, written once (imports neither torch nor JAX).

``MeanField`` is a mean-field guide over native families, for any model:
:math:`q_\phi(z) = \prod_s q_{\phi_s}(z_s)`, one independent factor per latent site ``s`` (element-wise
within the site, except the Dirichlet, one per simplex), in a family with the site's own support.

Families (:data:`FAMILIES`), by the kind of the site's support (:data:`DEFAULT_FAMILIES` is the choice
when the guide's ``families={"site": name}`` names none; it may name another for the same kind):

- real: ``"normal"``, Normal(loc, scale);
- positive (> 0 or >= 0): ``"lognormal"``, LogNormal(loc, scale), or ``"gamma"``, mean :math:`m` and
  concentration (shape) :math:`\alpha`: Gamma(:math:`\alpha`, rate :math:`\alpha/m`);
- unit interval [0, 1]: ``"beta"``, mean :math:`m` and concentration :math:`\nu`:
  Beta(:math:`m\nu`, :math:`(1-m)\nu`);
- simplex: ``"dirichlet"``, mean :math:`m` (on the simplex) and concentration :math:`\nu`:
  Dirichlet(:math:`m\nu`).

Any other support (discrete, an interval other than [0, 1], correlation matrices, ...) raises a
ValueError naming the site and its support, and what to do instead (:meth:`MeanFieldRules.choose_family`).

The mean-and-concentration parameters separate location from spread: the Gamma's mean and shape are
orthogonal parameters (diagonal Fisher information), and so are the Beta's mean and concentration at
:math:`m = 1/2`. With (concentration, rate) Adam crawls along a curved valley (both must shrink
together to widen q) and did not reach the Gamma-Poisson posterior's spread in the 400 steps of
``tests/test_conjugate.py``. Scales and concentrations are constrained positive through ``exp``, so
that optimizer steps on them are relative.

Initialisation (:meth:`MeanFieldRules.initial`): each site starts at mean :math:`m` (the guide's
``init_loc_fn``, by default the prior mean) and standard deviation :math:`s` = ``init_scale`` times the
prior's standard deviation (where that is infinite or undefined, ``init_scale`` times 1 on the real
line, :math:`m` on the positive line, :math:`\sqrt{m(1-m)}` on [0, 1] and the simplex), capped at
:math:`\sqrt{m(1-m)/2}` on [0, 1] and the simplex. The parameters are then matched to :math:`(m, s)`:

- Normal: :math:`(m, s)`;
- LogNormal: :math:`\sigma^2 = \log(1 + s^2/m^2)`, :math:`\mu = \log m - \sigma^2/2`;
- Gamma: :math:`\alpha = m^2/s^2`;
- Beta: :math:`\nu = m(1-m)/s^2 - 1`;
- Dirichlet: :math:`\nu` the mean of that expression over the simplex (exact for a Dirichlet prior,
  whose components share it).

Medians and quantiles (:func:`marginal_quantiles`, the guides' ``median`` and ``quantiles``, as
AutoGuides have) are those of each element's marginal under its factor, exact (SciPy's inverse CDFs):
for a Dirichlet site, of the Beta marginals :math:`\mathrm{Beta}(\alpha_i, \sum_j \alpha_j - \alpha_i)`,
so a site's medians need not sum to one.

Each backend subclasses :class:`MeanFieldRules` with its array functions (:class:`ArrayOps`), its
classification of support constraints and the words of its error messages. The names of the support
kinds (``"real"``, ``"positive"``, ``"unit_interval"``, ``"simplex"``) and of the families'
distributions (``"Normal"``, ...) are those of the constraint objects and distribution classes of
both ``torch.distributions`` and ``numpyro.distributions``, which each backend looks up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .forcing import check_estimator

__all__ = ["DEFAULT_FAMILIES", "FAMILIES", "ArrayOps", "Family", "MeanFieldRules", "marginal_quantiles"]

Array = Any
"""A torch tensor or a JAX array."""


@dataclass(frozen=True)
class ArrayOps:
    """The array functions that the maths here needs, from the backend (all else is operators)."""

    log: Callable[[Array], Array]
    log1p: Callable[[Array], Array]
    sqrt: Callable[[Array], Array]
    where: Callable[[Array, Array, Array], Array]
    minimum: Callable[[Array, Array], Array]
    mean_last: Callable[[Array], Array]
    """The mean over the last axis, kept (of size 1)."""


def _match_normal(ops: ArrayOps, mean: Array, sd: Array) -> tuple[Array, ...]:
    return mean, sd


def _match_lognormal(ops: ArrayOps, mean: Array, sd: Array) -> tuple[Array, ...]:
    log_var = ops.log1p((sd / mean) ** 2)
    return ops.log(mean) - log_var / 2, ops.sqrt(log_var)


def _match_gamma(ops: ArrayOps, mean: Array, sd: Array) -> tuple[Array, ...]:
    return mean, (mean / sd) ** 2


def _match_beta(ops: ArrayOps, mean: Array, sd: Array) -> tuple[Array, ...]:
    return mean, mean * (1 - mean) / sd**2 - 1


def _match_dirichlet(ops: ArrayOps, mean: Array, sd: Array) -> tuple[Array, ...]:
    return mean, ops.mean_last(mean * (1 - mean) / sd**2) - 1


def _same(*params: Array) -> tuple[Array, ...]:
    return params


def _gamma(mean: Array, concentration: Array) -> tuple[Array, ...]:
    return concentration, concentration / mean


def _beta(mean: Array, concentration: Array) -> tuple[Array, ...]:
    return mean * concentration, (1 - mean) * concentration


def _dirichlet(mean: Array, concentration: Array) -> tuple[Array, ...]:
    return (mean * concentration,)


@dataclass(frozen=True)
class Family:
    """A variational family of ``MeanField`` (see the module's docstring).

    :param name: its name in ``families={site: name}``.
    :param support: the kind of support it covers.
    :param distribution: the name of its distribution's class (in either backend's ``distributions``).
    :param params: its parameters, each ``(name, kind)``: the kind of support that constrains it.
    :param match: ``match(ops, mean, sd)``, the parameters with that mean and standard deviation.
    :param arguments: ``arguments(*params)``, the distribution's arguments from the parameters.
    :param event_dim: the event dims of one draw (1 for the Dirichlet).
    """

    name: str
    support: str
    distribution: str
    params: tuple[tuple[str, str], ...]
    match: Callable[..., tuple[Array, ...]]
    arguments: Callable[..., tuple[Array, ...]] = _same
    event_dim: int = 0


_LOC_SCALE = (("loc", "real"), ("scale", "positive"))


def _mean_concentration(mean: str) -> tuple[tuple[str, str], ...]:
    return ("mean", mean), ("concentration", "positive")


FAMILIES = {
    family.name: family
    for family in (
        Family("normal", "real", "Normal", _LOC_SCALE, _match_normal),
        Family("lognormal", "positive", "LogNormal", _LOC_SCALE, _match_lognormal),
        Family("gamma", "positive", "Gamma", _mean_concentration("positive"), _match_gamma, _gamma),
        Family("beta", "unit_interval", "Beta", _mean_concentration("unit_interval"), _match_beta, _beta),
        Family("dirichlet", "simplex", "Dirichlet", _mean_concentration("simplex"), _match_dirichlet, _dirichlet, 1),
    )
}
"""The families ``MeanField`` knows, by name."""
DEFAULT_FAMILIES = {"real": "normal", "positive": "lognormal", "unit_interval": "beta", "simplex": "dirichlet"}
"""The family ``MeanField`` picks for each kind of support when ``families`` names none."""


class MeanFieldRules:
    """The options of one ``MeanField`` guide, checked, and the rules that apply them to the model's sites.

    Each backend subclasses it, setting the class attributes (which a pickled guide refers to by its
    class, not by value).

    :param families: ``{site: family name}`` for sites that should not use the default family.
    :param estimators: ``{site: "score" | "pathwise"}``: the guide samples the site with that
        estimator (as the backend's ``force_estimator`` would) and asks for it with
        ``infer={"estimator": ...}``, which ``force_estimator`` and the ELBOs of this package respect
        (unless they name the site in ``sites=[...]``). Unnamed sites use the family's
        reparameterized sampler, i.e. whatever the ELBO chooses.
    :param init_scale: initial standard deviation as a fraction of the prior's (positive; see the
        module's docstring).
    """

    ops: ClassVar[ArrayOps]
    """The backend's array functions."""
    support_kind: ClassVar[Callable[[Any], str | None]]
    """A site's support constraint to ``"real"``, ``"positive"``, ``"unit_interval"``, ``"simplex"`` or None."""
    block: ClassVar[str]
    """How the error messages write the backend's handler that hides a site from a model."""
    enumeration: ClassVar[str]
    """How the error messages write the backend's enumeration of a discrete site."""

    def __init__(self, families: Mapping[str, str], estimators: Mapping[str, str], init_scale: float):
        for name, family in families.items():
            if family not in FAMILIES:
                raise ValueError(f"MeanField: unknown family {family!r} for site {name!r}; known: {sorted(FAMILIES)}")
        for name, estimator in estimators.items():
            check_estimator(estimator, f"site {name!r} (MeanField estimators=...)")
        if not init_scale > 0:
            raise ValueError(f"MeanField: init_scale must be positive, got {init_scale}")
        self.families = dict(families)
        self.estimators = dict(estimators)
        self.init_scale = float(init_scale)

    def check_latent(self, latent: Sequence[str]) -> None:
        """Raise a ValueError if ``families`` or ``estimators`` name a site not among ``latent``."""
        for option, names in (("families", self.families), ("estimators", self.estimators)):
            unknown = sorted(set(names) - set(latent))
            if unknown:
                raise ValueError(f"MeanField {option}=... names {unknown}, not latent sites of the model: {latent}")

    def choose_family(self, name: str, support: Any) -> Family:
        """Site ``name``'s family: named in ``families`` (checked against the kind of ``support``, the
        site's support constraint) or the default one."""
        kind = self.support_kind(support)
        if kind is None and support.is_discrete:
            raise ValueError(
                f"MeanField: site {name!r} has discrete support {support}; MeanField guides continuous latents "
                f"only. Sum the site out by enumeration ({self.enumeration}), or guide it separately: "
                f"MeanField({self.block}(model, hide=[{name!r}])) and a guide for {name!r} in an AutoGuideList."
            )
        if kind is None:
            raise ValueError(
                f"MeanField: site {name!r} has support {support}, for which it has no family (it covers real: "
                "normal; positive: lognormal, gamma; unit interval [0, 1]: beta; simplex: dirichlet). Rewrite the "
                "model onto a covered support (e.g. an interval (a, b) as a + (b - a) times a Beta variable), or "
                f"guide the site separately: MeanField({self.block}(model, hide=[{name!r}])) and "
                f"AutoNormal({self.block}(model, expose=[{name!r}])) in an AutoGuideList."
            )
        family = FAMILIES[self.families.get(name, DEFAULT_FAMILIES[kind])]
        if family.support != kind:
            fits = sorted(f.name for f in FAMILIES.values() if f.support == kind)
            raise ValueError(
                f"MeanField: families[{name!r}] = {family.name!r} is a family on the {family.support} "
                f"support, but site {name!r} has support {support} ({kind}); families for it: {fits}"
            )
        return family

    def init_sd(self, kind: str, mean: Array, prior_sd: Array) -> Array:
        """The initial standard deviation on a support of this ``kind``: ``init_scale`` times
        ``prior_sd`` (the prior's, of the shape of ``mean``; nan where it is undefined), or times the
        natural scale where that is not finite and positive; capped on [0, 1] and the simplex."""
        ops = self.ops
        if kind == "real":
            natural = 1.0
        elif kind == "positive":
            natural = mean
        else:
            natural = ops.sqrt(mean * (1 - mean))
        usable = (prior_sd > 0) & (prior_sd < math.inf)  # finite and positive; False for nan
        sd = self.init_scale * ops.where(usable, prior_sd, natural)
        if kind in ("unit_interval", "simplex"):
            sd = ops.minimum(sd, ops.sqrt(mean * (1 - mean) / 2))
        return sd

    def initial(self, family: Family, mean: Array, prior_sd: Array) -> tuple[Array, ...]:
        """The family's initial parameters, in the order of ``family.params``: matched to ``mean`` and
        :meth:`init_sd` (see the module's docstring)."""
        return family.match(self.ops, mean, self.init_sd(family.support, mean, prior_sd))


def marginal_quantiles(family: Family, arguments: Sequence[np.ndarray], probs: Sequence[float]) -> np.ndarray:
    """The ``probs`` quantiles of each element of a factor of ``family`` whose distribution takes
    ``arguments`` (NumPy arrays, as ``family.arguments`` gives them): shape ``(len(probs), *shape)``.
    A Dirichlet's are those of its Beta marginals (see the module's docstring)."""
    from scipy import stats

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"quantiles must be a list of probabilities in [0, 1], got {probs!r}")
    arguments = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in arguments))
    p = p.reshape((-1,) + (1,) * arguments[0].ndim)
    kind = family.distribution
    if kind == "Normal":
        return stats.norm.ppf(p, *arguments)
    if kind == "LogNormal":
        return np.exp(stats.norm.ppf(p, *arguments))
    if kind == "Gamma":
        concentration, rate = arguments
        return stats.gamma.ppf(p, concentration, scale=1 / rate)
    if kind == "Beta":
        return stats.beta.ppf(p, *arguments)
    if kind == "Dirichlet":
        (alpha,) = arguments
        return stats.beta.ppf(p, alpha, alpha.sum(-1, keepdims=True) - alpha)
    raise NotImplementedError(f"no quantiles for the family {family.name!r}")
