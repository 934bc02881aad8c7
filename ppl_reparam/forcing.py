"""Which gradient estimator each guide site uses: the rules both backends share (framework-free).

At a latent site the estimator is, in order of precedence: the handler's ``estimator`` if its
``sites`` name the site; else the site's own request, ``infer={"estimator": ...}`` (which a handler
nested inside records when it forces the site); else the handler's ``estimator`` if it names no
sites; else none (the family's native behaviour). Each backend's ``ForceEstimatorMessenger`` applies
the choice to the site's distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

ESTIMATORS = ("score", "pathwise")
"""The estimator names accepted everywhere."""


def check_estimator(estimator: str, where: str = "") -> str:
    """Return ``estimator`` if it is a known name, else raise a ValueError that lists the names."""
    if estimator not in ESTIMATORS:
        at = f" at {where}" if where else ""
        raise ValueError(
            f"unknown estimator {estimator!r}{at}; expected 'score' (score function / REINFORCE) "
            "or 'pathwise' (reparameterization)"
        )
    return estimator


class SiteChoices:
    """The precedence rules above for one run of a guide; remembers the latent sites it was asked about."""

    def __init__(self, estimator: str | None, sites: Iterable[str] | None = None):
        if estimator is not None:
            check_estimator(estimator)
        if isinstance(sites, str):
            sites = [sites]
        self.estimator = estimator
        self.sites = None if sites is None else frozenset(sites)
        self.seen: set[str] = set()

    def choose(self, name: str, infer: Mapping[str, Any]) -> str | None:
        """The estimator for the latent site ``name`` with the site's ``infer`` dict, or None."""
        self.seen.add(name)
        if self.sites is not None and name in self.sites:
            return self.estimator
        requested = infer.get("estimator")
        if requested is not None:
            return check_estimator(requested, f"site {name!r} (infer={{'estimator': ...}})")
        return self.estimator if self.sites is None else None

    def check_sites_seen(self) -> None:
        """Raise if ``sites`` named a site that the guide never sampled."""
        missing = (self.sites or frozenset()) - self.seen
        if missing:
            raise ValueError(
                f"sites {sorted(missing)} were named for the {self.estimator!r} estimator but the "
                f"guide has no such latent sample site; its latent sites are {sorted(self.seen)}"
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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        messenger = self.messenger(self.estimator, self.sites)
        with messenger:
            result = self.guide(*args, **kwargs)
        messenger.choices.check_sites_seen()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["guide"], name)

    def __repr__(self) -> str:
        return f"force_estimator({self.guide!r}, {self.estimator!r}, sites={self.sites})"
