r"""A mean-field guide over native families, for any NumPyro model (NumPyro backend).

:class:`MeanField` is the counterpart of :class:`ppl_reparam.pyro.MeanField`, with the same family
rules, initialisation and options: one factor per latent site in a family with the site's own support
(Normal; LogNormal or Gamma; Beta; Dirichlet), the gradient estimator chosen per site.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro import handlers
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.util import periodic_repeat
from numpyro.infer.autoguide import AutoGuide
from numpyro.infer.initialization import init_to_median

from ..forcing import check_estimator
from .handlers import apply_estimator

__all__ = ["DEFAULT_FAMILIES", "FAMILIES", "Family", "MeanField", "init_to_prior_mean", "support_kind"]


def _match_normal(mean: jax.Array, sd: jax.Array) -> tuple[jax.Array, ...]:
    return mean, sd


def _match_lognormal(mean: jax.Array, sd: jax.Array) -> tuple[jax.Array, ...]:
    log_var = jnp.log1p((sd / mean) ** 2)
    return jnp.log(mean) - log_var / 2, jnp.sqrt(log_var)


def _match_gamma(mean: jax.Array, sd: jax.Array) -> tuple[jax.Array, ...]:
    return mean, (mean / sd) ** 2


def _match_beta(mean: jax.Array, sd: jax.Array) -> tuple[jax.Array, ...]:
    return mean, mean * (1 - mean) / sd**2 - 1


def _match_dirichlet(mean: jax.Array, sd: jax.Array) -> tuple[jax.Array, ...]:
    return mean, jnp.mean(mean * (1 - mean) / sd**2, -1, keepdims=True) - 1


def _gamma(mean: jax.Array, concentration: jax.Array) -> dist.Gamma:
    return dist.Gamma(concentration, concentration / mean)


def _beta(mean: jax.Array, concentration: jax.Array) -> dist.Beta:
    return dist.Beta(mean * concentration, (1 - mean) * concentration)


def _dirichlet(mean: jax.Array, concentration: jax.Array) -> dist.Dirichlet:
    return dist.Dirichlet(mean * concentration)


@dataclass(frozen=True)
class Family:
    """A variational family of :class:`MeanField`: the support it covers, its distribution as a
    function of its parameters (name, constraint), and ``match(mean, sd)``, the parameters with that
    mean and standard deviation. ``event_dim`` is the event dims of one draw (1 for the Dirichlet)."""

    name: str
    support: str
    dist: Callable[..., Distribution]
    params: tuple[tuple[str, constraints.Constraint], ...]
    match: Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]]
    event_dim: int = 0


_POSITIVE = constraints.positive
_LOC_SCALE = (("loc", constraints.real), ("scale", _POSITIVE))


def _mean_concentration(mean: constraints.Constraint) -> tuple[tuple[str, constraints.Constraint], ...]:
    return ("mean", mean), ("concentration", _POSITIVE)


FAMILIES = {
    family.name: family
    for family in (
        Family("normal", "real", dist.Normal, _LOC_SCALE, _match_normal),
        Family("lognormal", "positive", dist.LogNormal, _LOC_SCALE, _match_lognormal),
        Family("gamma", "positive", _gamma, _mean_concentration(_POSITIVE), _match_gamma),
        Family("beta", "unit_interval", _beta, _mean_concentration(constraints.unit_interval), _match_beta),
        Family("dirichlet", "simplex", _dirichlet, _mean_concentration(constraints.simplex), _match_dirichlet, 1),
    )
}
"""The families :class:`MeanField` knows, by name."""
DEFAULT_FAMILIES = {"real": "normal", "positive": "lognormal", "unit_interval": "beta", "simplex": "dirichlet"}
"""The family :class:`MeanField` picks for each kind of support when ``families`` names none."""


def _is_constant(value: Any, target: float) -> bool:
    return bool(jnp.all(jnp.asarray(value) == target))


def support_kind(support: constraints.Constraint) -> str | None:
    """``"real"``, ``"positive"`` (> 0 or >= 0), ``"unit_interval"`` ([0, 1], open or closed) or
    ``"simplex"`` for a site's support, looking through ``independent``; None for any other (and
    for every discrete support)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support.is_discrete:
        return None
    if isinstance(support, type(constraints.real)):
        return "real"
    if isinstance(support, type(constraints.greater_than(0.0))):  # > or >= (a subclass), softplus_positive
        return "positive" if _is_constant(support.lower_bound, 0) else None
    if isinstance(support, type(constraints.interval(0.0, 1.0))):  # closed, open, unit
        unit = _is_constant(support.lower_bound, 0) and _is_constant(support.upper_bound, 1)
        return "unit_interval" if unit else None
    if isinstance(support, type(constraints.simplex)):
        return "simplex"
    return None


def init_to_prior_mean(site: dict | None = None) -> jax.Array | None:
    """NumPyro's ``init_to_mean``, but it also falls back to ``init_to_median`` where the prior mean is
    infinite, e.g. a HalfCauchy, not only where it is undefined. Use as ``init_loc_fn``."""
    if site is None:
        return init_to_prior_mean
    if site["type"] != "sample" or site["is_observed"] or site["fn"].support.is_discrete:
        return None
    if site["value"] is not None:
        return site["value"]
    try:
        mean = site["fn"].mean
    except NotImplementedError:
        return init_to_median(site)
    sample_shape = site["kwargs"].get("sample_shape") or ()
    mean = jnp.broadcast_to(mean, tuple(sample_shape) + site["fn"].shape())
    if isinstance(mean, jax.core.Tracer) or not bool(jnp.all(jnp.isfinite(mean))):
        return jnp.where(jnp.isfinite(mean), mean, init_to_median(site))
    return mean


class MeanField(AutoGuide):
    r"""Mean-field guide over native families, for any NumPyro model:
    :math:`q_\phi(z) = \prod_s q_{\phi_s}(z_s)`, one independent factor per latent site ``s``
    (element-wise within the site, except the Dirichlet, one per simplex).

    Unlike NumPyro's ``AutoNormal``, which samples a Normal on the unconstrained space and transforms
    it, each site is drawn from a family with the site's own support, so the estimators can be
    compared on it: the pathwise gradient of Gamma, Beta and Dirichlet samples is the implicit
    reparameterization gradient (Figurnov, Mohamed and Mnih, NeurIPS 2018). There are no guide-only
    sites.

    Families, by the support of the model's site (``families={"site": name}`` overrides, among
    those for the same support), with their parameters:

    - real: ``"normal"``, Normal(loc, scale);
    - positive (> 0 or >= 0): ``"lognormal"``, LogNormal(loc, scale), or ``"gamma"``, mean :math:`m`
      and concentration (shape) :math:`\alpha`: Gamma(:math:`\alpha`, rate :math:`\alpha/m`);
    - unit interval [0, 1]: ``"beta"``, mean :math:`m` and concentration :math:`\nu`:
      Beta(:math:`m\nu`, :math:`(1-m)\nu`);
    - simplex: ``"dirichlet"``, mean :math:`m` (on the simplex) and concentration :math:`\nu`:
      Dirichlet(:math:`m\nu`).

    Any other support (discrete, an interval other than [0, 1], correlation matrices, ...) raises a
    ValueError naming the site and its support. Scales and concentrations are constrained positive
    through ``exp`` (``biject_to(positive)``), so optimizer steps on them are relative; the reasons
    for the mean-and-concentration parameters are in :class:`ppl_reparam.pyro.MeanField`.

    Initialisation: each site starts at mean :math:`m` = the value of ``init_loc_fn`` (default
    :func:`init_to_prior_mean`: the prior mean) and standard deviation :math:`s` = ``init_scale``
    times the prior's standard deviation (where that is infinite or undefined, ``init_scale`` times
    1 on the real line, :math:`m` on the positive line, :math:`\sqrt{m(1-m)}` on [0, 1] and the
    simplex), capped at :math:`\sqrt{m(1-m)/2}` on [0, 1] and the simplex. The parameters are then
    matched to :math:`(m, s)`: Normal :math:`(m, s)`; LogNormal :math:`\sigma^2 = \log(1 + s^2/m^2)`,
    :math:`\mu = \log m - \sigma^2/2`; Gamma :math:`\alpha = m^2/s^2`; Beta
    :math:`\nu = m(1-m)/s^2 - 1`; Dirichlet :math:`\nu` the mean of that expression over the simplex.

    Plates and subsampling as in NumPyro's AutoGuides: a site's parameters have the full size of its
    plates, and inside a subsampled plate the guide uses the rows of the subsample's indices
    (``numpyro.param(..., event_dim=...)`` subsamples them).

    Parameters are NumPyro params named ``"{prefix}.params.{site}.{param}"``, the names the Pyro
    guide has in Pyro's param store (``"MeanField.params.mu.loc"`` with the default prefix).

    :param model: the NumPyro model; its latent sites are found by running it once, on the first call.
    :param families: ``{site: family name}`` for sites that should not use the default family.
    :param estimators: ``{site: "score" | "pathwise"}``: the site is sampled with that estimator (as
        :func:`~ppl_reparam.numpyro.force_estimator` would) and asks for it with
        ``infer={"estimator": ...}``, which :func:`~ppl_reparam.numpyro.force_estimator` and the ELBOs
        of this package respect (unless they name the site in ``sites=[...]``). Unnamed sites use the
        family's reparameterized sampler, i.e. whatever the ELBO chooses.
    :param prefix: first part of the parameters' names.
    :param init_loc_fn: per-site initial mean, a NumPyro init strategy.
    :param init_scale: initial standard deviation as a fraction of the prior's (see above).
    :param create_plates: as for NumPyro's AutoGuides: a function of the model's arguments returning
        the plates (e.g. with ``subsample_size=...``) that the guide should use.

    Calling the guide returns ``{site: sample}``; :meth:`distribution` gives one site's factor.
    """

    def __init__(
        self,
        model: Callable,
        families: Mapping[str, str] | None = None,
        estimators: Mapping[str, str] | None = None,
        *,
        prefix: str = "MeanField",
        init_loc_fn: Callable = init_to_prior_mean,
        init_scale: float = 0.1,
        create_plates: Callable | None = None,
    ):
        self.families = dict(families or {})
        self.estimators = dict(estimators or {})
        for name, family in self.families.items():
            if family not in FAMILIES:
                raise ValueError(f"MeanField: unknown family {family!r} for site {name!r}; known: {sorted(FAMILIES)}")
        for name, estimator in self.estimators.items():
            check_estimator(estimator, f"site {name!r} (MeanField estimators=...)")
        if not init_scale > 0:
            raise ValueError(f"MeanField: init_scale must be positive, got {init_scale}")
        self._init_scale = float(init_scale)
        self._family: dict[str, Family] = {}
        self._init_values: dict[str, tuple[jax.Array, ...]] = {}
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn, create_plates=create_plates)

    def _choose_family(self, name: str, support: constraints.Constraint) -> Family:
        """The site's family: named in ``families`` (checked against the support) or the default."""
        kind = support_kind(support)
        if kind is None and support.is_discrete:
            raise ValueError(
                f"MeanField: site {name!r} has discrete support {support}; MeanField guides continuous latents "
                "only. Sum the site out by enumeration (config_enumerate with TraceEnum_ELBO, which needs funsor), "
                f"or guide it separately: MeanField(numpyro.handlers.block(model, hide=[{name!r}])) and a guide "
                f"for {name!r} in an AutoGuideList."
            )
        if kind is None:
            raise ValueError(
                f"MeanField: site {name!r} has support {support}, for which it has no family (it covers real: "
                "normal; positive: lognormal, gamma; unit interval [0, 1]: beta; simplex: dirichlet). Rewrite the "
                "model onto a covered support (e.g. an interval (a, b) as a + (b - a) times a Beta variable), or "
                f"guide the site separately: MeanField(numpyro.handlers.block(model, hide=[{name!r}])) and "
                f"AutoNormal(numpyro.handlers.block(model, expose=[{name!r}])) in an AutoGuideList."
            )
        family = FAMILIES[self.families.get(name, DEFAULT_FAMILIES[kind])]
        if family.support != kind:
            fits = sorted(f.name for f in FAMILIES.values() if f.support == kind)
            raise ValueError(
                f"MeanField: families[{name!r}] = {family.name!r} is a family on the {family.support} "
                f"support, but site {name!r} has support {support} ({kind}); families for it: {fits}"
            )
        return family

    def _init_sd(self, fn: Distribution, mean: jax.Array, kind: str) -> jax.Array:
        """``init_scale`` times the prior's standard deviation, or a natural scale where that is not
        finite; capped on [0, 1] and the simplex (see the class docstring)."""
        try:
            prior_sd = jnp.broadcast_to(jnp.sqrt(fn.variance), jnp.shape(mean))
        except NotImplementedError:
            prior_sd = jnp.full_like(mean, jnp.nan)
        natural = {"real": jnp.ones_like(mean), "positive": mean}.get(kind, jnp.sqrt(mean * (1 - mean)))
        sd = self._init_scale * jnp.where(jnp.isfinite(prior_sd) & (prior_sd > 0), prior_sd, natural)
        if kind in ("unit_interval", "simplex"):
            sd = jnp.minimum(sd, jnp.sqrt(mean * (1 - mean) / 2))
        return sd

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        """Run the model once with its latent sites at ``init_loc_fn``'s values; choose each site's
        family and its initial parameters (full size along subsampled plates)."""
        rng_key = numpyro.prng_key()

        def init_loc(site: dict) -> jax.Array | None:
            if site["type"] == "sample" and not site["is_observed"]:
                self._choose_family(site["name"], site["fn"].support)  # fail fast, before drawing anything
            return self.init_loc_fn(site)

        with handlers.block():
            seeded = handlers.seed(self.model, random.PRNGKey(0) if rng_key is None else rng_key)
            initialised = handlers.substitute(seeded, substitute_fn=init_loc)
            self.prototype_trace = handlers.trace(initialised).get_trace(*args, **kwargs)
        self._prototype_frames, self._prototype_frame_full_sizes = {}, {}
        for name, site in self.prototype_trace.items():
            if site["type"] == "plate":
                self._prototype_frame_full_sizes[name] = site["args"][0]
            elif site["type"] == "sample" and not site["is_observed"]:
                for frame in site["cond_indep_stack"]:
                    self._prototype_frames[frame.name] = frame
        latent = self._latent_names()
        for option, names in (("families", self.families), ("estimators", self.estimators)):
            unknown = sorted(set(names) - set(latent))
            if unknown:
                raise ValueError(f"MeanField {option}=... names {unknown}, not latent sites of the model: {latent}")
        for name in latent:
            site = self.prototype_trace[name]
            fn = site["fn"]
            family = self._family[name] = self._choose_family(name, fn.support)
            repeats = tuple(
                (self._prototype_frame_full_sizes[frame.name], frame.dim - fn.event_dim)
                for frame in site["cond_indep_stack"]
                if self._prototype_frame_full_sizes[frame.name] != frame.size
            )

            def initial(fn: Distribution, mean: jax.Array, family: Family = family, repeats: tuple = repeats):
                values = family.match(mean, self._init_sd(fn, mean, family.support))
                for full_size, dim in repeats:
                    values = [periodic_repeat(v, full_size, dim) for v in values]
                return tuple(values)

            mean = jnp.asarray(site["value"])
            try:  # one compiled computation per site rather than a dozen small eager ones (much faster)
                self._init_values[name] = jax.jit(initial)(fn, mean)
            except (TypeError, NotImplementedError):  # a distribution that is not a pytree
                self._init_values[name] = initial(fn, mean)

    def _latent_names(self) -> list[str]:
        return [
            name for name, site in self.prototype_trace.items() if site["type"] == "sample" and not site["is_observed"]
        ]

    def _param_name(self, site: str, param: str) -> str:
        return f"{self.prefix}.params.{site}.{param}"

    def _factor(self, name: str, params: Mapping[str, jax.Array]) -> Distribution:
        family = self._family[name]
        fn = family.dist(*(params[param] for param, _ in family.params))
        extra = self.prototype_trace[name]["fn"].event_dim - family.event_dim
        return fn.to_event(extra) if extra else fn

    def distribution(self, name: str, params: Mapping[str, jax.Array] | None = None) -> Distribution:
        """The factor :math:`q(z_s)` of site ``name``, with full-size parameters (no plates), at the
        constrained ``params`` (as ``svi.get_params(state)`` returns them; default: the initial
        values), e.g. ``guide.distribution("theta", params).mean``. Available after the first call."""
        if name not in self._family:
            raise KeyError(f"MeanField has no site {name!r} (sites: {sorted(self._family)}; call the guide first)")
        params = params or {}
        values = {
            param: params.get(self._param_name(name, param), init)
            for (param, _), init in zip(self._family[name].params, self._init_values[name])
        }
        return self._factor(name, values)

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Sample every latent site of the model; arguments are the model's. Returns ``{site: value}``."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name in self._latent_names():
            site = self.prototype_trace[name]
            family = self._family[name]
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    stack.enter_context(plates[frame.name])
                params = {
                    param: numpyro.param(
                        self._param_name(name, param), init, constraint=constraint, event_dim=site["fn"].event_dim
                    )
                    for (param, constraint), init in zip(family.params, self._init_values[name])
                }
                fn, infer = self._factor(name, params), {}
                if name in self.estimators:
                    fn = apply_estimator(name, fn, self.estimators[name])
                    infer = {"estimator": self.estimators[name]}
                result[name] = numpyro.sample(name, fn, infer=infer)
        return result

    def sample_posterior(
        self, rng_key: jax.Array, params: Mapping[str, jax.Array], *args: Any, sample_shape: tuple = (), **kwargs: Any
    ) -> dict[str, jax.Array]:
        """Draws from every factor at ``params``, full size along plates, of shape ``sample_shape``
        plus the site's."""
        if self.prototype_trace is None:
            with handlers.seed(rng_seed=rng_key):
                self._setup_prototype(*args, **kwargs)
        names = self._latent_names()
        keys = random.split(rng_key, len(names))
        return {name: self.distribution(name, params).sample(key, sample_shape) for name, key in zip(names, keys)}
