"""Which gradient estimator each guide site uses: the rules both backends share (framework-free).

At a latent site the estimator is, in order of precedence: the handler's ``estimator`` if its
``sites`` name the site; else the site's own request, ``infer={"estimator": ...}`` (which a handler
nested inside records when it forces the site); else the handler's ``estimator`` if it names no
sites; else none (the family's native behaviour). Each backend's ``ForceEstimatorMessenger`` applies
the choice to the site's distribution.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .auto import resolve

ESTIMATORS = ("score", "pathwise", "measure", "rebar", "relax")
"""The estimator names accepted everywhere."""

REQUESTS = (*ESTIMATORS, "auto")
"""What a site or :func:`force_estimator` may ask for: an estimator, or ``"auto"`` (chosen by
measurement, :mod:`ppl_reparam.auto`)."""


def check_estimator(estimator: str, where: str = "", auto: bool = False) -> str:
    """Return ``estimator`` if it is a known name (or ``"auto"`` where ``auto``), else raise a ValueError
    that lists the names."""
    if estimator not in (REQUESTS if auto else ESTIMATORS):
        at = f" at {where}" if where else ""
        also = (", 'measure' (measure-valued), 'rebar' (REBAR, Bernoulli sites), 'relax' (RELAX, Bernoulli and "
                "categorical sites)")
        also += " or 'auto' (chosen by measurement)" if auto else ""
        raise ValueError(
            f"unknown estimator {estimator!r}{at}; expected 'score' (score function / REINFORCE), "
            f"'pathwise' (reparameterization){also}"
        )
    return estimator


class SiteChoices:
    """The precedence rules above for one run of a guide; remembers the latent sites it was asked about."""

    def __init__(self, estimator: str | None, sites: Iterable[str] | None = None):
        if estimator is not None:
            check_estimator(estimator, auto=True)
        if isinstance(sites, str):
            sites = [sites]
        self.estimator = estimator
        self.sites = None if sites is None else frozenset(sites)
        self.seen: set[str] = set()

    def choose(self, name: str, infer: Mapping[str, Any], fn: Any = None) -> str | None:
        """The estimator for the latent site ``name`` with the site's ``infer`` dict and distribution
        ``fn``, or None; ``"auto"`` is resolved (:func:`ppl_reparam.auto.resolve`)."""
        self.seen.add(name)
        if self.sites is not None and name in self.sites:
            requested = self.estimator
        else:
            requested = infer.get("estimator")
            if requested is not None:
                check_estimator(requested, f"site {name!r} (infer={{'estimator': ...}})", auto=True)
            elif self.sites is None:
                requested = self.estimator
        return resolve(name, fn) if requested == "auto" else requested

    def unknown(self, model_sites: Iterable[str]) -> list[str]:
        """The named sites that are neither sampled by the guide in this run nor sites of the model
        (``model_sites``): names that cannot be right on this call."""
        return sorted((self.sites or frozenset()) - self.seen - set(model_sites))


@contextmanager
def checking_sites() -> Iterator[list[SiteChoices]]:
    """Collect the :class:`SiteChoices` of the :class:`ForcedGuide` calls inside the block, for an
    ELBO to check against the model's sites (:func:`check_named_sites`) instead of each guide alone."""
    found: list[SiteChoices] = []
    _COLLECTORS.append(found)
    try:
        yield found
    finally:
        _COLLECTORS.pop()


_COLLECTORS: list[list[SiteChoices]] = []


def check_named_sites(choices: Iterable[SiteChoices], model_sites: Iterable[str], guide_latents: Iterable[str]) -> None:
    """Raise a ValueError for a site named for an estimator (by an ELBO's ``sites=`` or
    :func:`force_estimator`) that is neither a latent site of the guide nor a site of the model on this
    call. A named site that the guide skips on some calls (the label ``y`` of a semi-supervised guide,
    observed in the model when given) is accepted on those calls."""
    model_sites = set(model_sites)
    for choice in choices:
        unknown = choice.unknown(model_sites)
        if unknown:
            raise ValueError(
                f"sites {unknown} were named for the {choice.estimator!r} estimator but are neither latent "
                f"sites of the guide nor sites of the model; the guide's latent sites are "
                f"{sorted(guide_latents)}"
            )


class ForcedGuide:
    """A guide whose sites use the chosen estimator: each call runs under a fresh ``messenger``
    (the backend's handler, built from ``estimator`` and ``sites``) and then checks that every named
    site was sampled. Attributes (``median``, ``parameters``, ...) are those of the wrapped guide."""

    def __init__(self, guide: Callable, estimator: str, sites: Iterable[str] | None, messenger: Callable):
        if isinstance(sites, str):
            sites = [sites]
        self.guide = guide
        self.estimator = estimator
        self.sites = None if sites is None else tuple(sites)
        self.messenger = messenger
        SiteChoices(estimator, self.sites)  # validate the arguments now
        self._seen: set[str] = set()
        self._warned: set[str] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        messenger = self.messenger(self.estimator, self.sites)
        with messenger:
            result = self.guide(*args, **kwargs)
        self._check(messenger.choices)
        return result

    def _check(self, choices: SiteChoices) -> None:
        """Under this package's ELBOs, hand ``choices`` to the ELBO, which checks them against the
        model's sites; elsewhere (the model unseen), warn once per named site that no call so far has
        sampled (it may be a typo, or a site this guide samples only on some calls)."""
        if _COLLECTORS:
            _COLLECTORS[-1].append(choices)
            return
        self._seen |= choices.seen
        for name in sorted(set(self.sites or ()) - self._seen - self._warned):
            self._warned.add(name)
            warnings.warn(
                f"force_estimator: site {name!r} named for the {self.estimator!r} estimator has not been "
                f"sampled by the guide in any call so far (its latent sites: {sorted(self._seen)}). If it "
                "is sampled only on some calls this is expected; otherwise check the name.",
                stacklevel=3,
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["guide"], name)

    def __repr__(self) -> str:
        return f"force_estimator({self.guide!r}, {self.estimator!r}, sites={self.sites})"
