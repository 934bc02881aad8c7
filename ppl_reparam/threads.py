"""How many CPU threads the array libraries use: a policy that is right by default.

torch (and NumPy's BLAS) run each operation on a pool of intra-op threads, by default one per core.
This project's operations are small (a minibatch of a small network, a few hundred thousand particles
of a scalar model): splitting them costs more in hand-offs than it gains, and on a machine with
another busy process the pool's threads contend with it for the cores. Measured on a 2-core machine
with one other busy process: the toy sweep's N = 100,000 took 13-16 s on torch's default threads
against 2.5 s on one; an SVI step of the digits VAE was up to 25 times slower on two threads than on
one. So :func:`auto_threads` gives one thread unless one operation's work is large
(:data:`LARGE_WORK` elements), and :func:`limited_threads` applies a choice for a block and restores
the caller's setting after it. JAX/XLA fixes its thread pool when it starts, so the NumPyro backend is
not affected (XLA already runs small operations on one thread).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LARGE_WORK = 2**22
"""Elements of one operation from which more than one thread pays off (about 4 million)."""


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_threads(work: int | None = None, requested: int | None = None) -> int:
    """``requested`` if given (at least 1), else one thread for operations of fewer than
    :data:`LARGE_WORK` elements (``work``; None: small) and every available core for larger ones."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be at least 1, got {requested}")
        return int(requested)
    return available_cores() if work is not None and work >= LARGE_WORK else 1


@contextmanager
def limited_threads(n: int) -> Iterator[None]:
    """At most ``n`` threads for torch's CPU kernels (if torch is loaded: this never imports it) and
    for the BLAS of NumPy and SciPy in the block; the caller's settings are restored after it."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    previous = torch.get_num_threads() if torch is not None else None
    if torch is not None and previous != n:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        if torch is not None and torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
