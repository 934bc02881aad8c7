"""Which score-function sites each tensor depends on: provenance tracking in torch.

A score-function site's sample is drawn as a :class:`Tracked` tensor (the ELBOs' forcing handler sets
it up, :class:`~ppl_reparam.pyro.handlers.EstimatorDistribution`), a tensor subclass that carries the
set of site names it depends on; every torch operation on it returns a :class:`Tracked` result with
the union of its inputs' sets (Wingate, Goodman, Stuhlmüller and Siskind 2011), so a loss term
computed from the traces knows the sites :math:`D_t` of :mod:`ppl_reparam.surrogate`. This is what
``pyro.ops.provenance`` does for Pyro's ``TraceGraph_ELBO``, in fewer Python calls per operation
(the arguments are scanned once, without building pytrees), since every operation of the model
downstream of a score-function sample pays for it. Operations that write into a plain tensor
(``x[i] = z``) lose the set, as there.
"""

from __future__ import annotations

from typing import Any

import torch

_NONE: frozenset = frozenset()


class Tracked(torch.Tensor):
    """A tensor with the set of score-function sites it depends on (``deps``); ``plain`` is the
    same tensor without it (same autograd and forward-mode history)."""

    deps: frozenset
    plain: torch.Tensor

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        found = _collect(args, _collect(kwargs.values(), _NONE))
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        return _attach(out, found)


def _collect(values: Any, found: frozenset) -> frozenset:
    for x in values:
        if isinstance(x, Tracked):
            found = found | x.deps
        elif isinstance(x, (list, tuple)) and x:
            found = _collect(x, found)
    return found


def _attach(out: Any, deps: frozenset) -> Any:
    if not deps:
        return out
    if isinstance(out, torch.Tensor):
        return track(out, deps)
    if isinstance(out, (list, tuple)):
        return type(out)(_attach(x, deps) for x in out)
    return out


def track(x: torch.Tensor, deps: frozenset) -> torch.Tensor:
    """``x`` carrying ``deps`` (joined to those it already carries)."""
    if isinstance(x, Tracked):
        deps, x = deps | x.deps, x.plain
    out = x.as_subclass(Tracked)
    out.deps, out.plain = deps, x
    return out


def deps_of(x: Any) -> frozenset:
    """The score-function sites ``x`` depends on (empty for a plain tensor or a number)."""
    return x.deps if isinstance(x, Tracked) else _NONE


def untrack(x: Any) -> Any:
    """``x`` as a plain tensor (unchanged if it is not tracked)."""
    return x.plain if isinstance(x, Tracked) else x
