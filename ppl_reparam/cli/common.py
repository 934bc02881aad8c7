"""What the subcommands share: argument types, the thread policy of a command, signals."""

from __future__ import annotations

import argparse
import math
import os
import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NoReturn

from ..threads import auto_threads, limited_threads


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown in the options' help; the epilog (the spec grammar) kept as written."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, naming the option, then exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


SPEC_HELP = """estimator specs: BASE[+OPTION...][:K], comma-separated where a list is taken
  BASE      score (score function / REINFORCE), pathwise (reparameterization), measure (measure-valued),
            rebar (REBAR, Bernoulli sites), relax (RELAX, a learned control; Bernoulli and categorical
            sites), iwae (importance-weighted bound, pathwise gradient),
            iwae-vimco (VIMCO), iwae-dreg (DReG);
            relaxed+t=T (the discrete VAE's Concrete relaxation at temperature T, trained pathwise)
  OPTION    akl (closed-form KL / entropy), stl (sticking the landing, pathwise only),
            anti or qmc (antithetic pairs, even K / randomized quasi-Monte Carlo, K >= 2; pathwise only),
            one baseline for score: b=VALUE (constant), rloo (leave-one-out, K >= 2), ma (moving average),
            learned (a network of the batch); indep (measure: independent sides); t=T, eta=E (rebar's
            temperature and control weight, relax's starting ones); fit=N (relax: steps fitting its
            control before the first estimate); the IWAE bases take no option
  K         particles per estimate (default 1; 5 for the IWAE bases)
  e.g.      score, score+akl, score+rloo:4, score+b=7, pathwise+stl, pathwise+qmc:8, iwae-vimco:4,
            measure+akl, rebar+t=1, relax+fit=300"""
"""The estimator-spec grammar (:mod:`ppl_reparam.specs`), for the commands' ``--help``."""


def number(low: float, high: float, *, integer: bool = False, open_low: bool = False) -> Any:
    """An argument type: a finite number in ``[low, high]`` (``(low, high]`` with ``open_low``)."""

    def parse(text: str) -> float | int:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        inside = (low < value if open_low else low <= value) and value <= high
        if not (math.isfinite(value) and inside):
            show = (lambda v: str(int(v))) if integer else (lambda v: f"{v:g}")
            bounds = f"{'(' if open_low else '['}{show(low)}, {show(high)}]"
            kind = "an integer" if integer else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {kind} in {bounds}, got {text!r}")
        return value

    return parse


def int_list(text: str) -> tuple[int, ...]:
    """An argument type: comma-separated positive integers (layer sizes), at most 10**5 each."""
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or not all(1 <= v <= 10**5 for v in values):
        raise argparse.ArgumentTypeError(f"expected sizes from 1 to 100000, got {text!r}")
    return values


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the block, like Ctrl-C (main thread only)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def threads(n: int | None, work: int | None = None) -> AbstractContextManager[None]:
    """The command's thread policy (:mod:`ppl_reparam.threads`): ``--threads`` if given, else one
    thread for small work. Load torch first if the command uses it, so that the policy reaches it."""
    return limited_threads(auto_threads(work, n))


TOY_BYTES_PER_PARTICLE = 512
"""A generous bound on the memory one toy particle takes in a vectorized pass (values, log densities,
the surrogate and their gradients)."""


def memory_bytes() -> int:
    """This machine's physical memory (a large number where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 2**40


def check_memory(option: str, particles: int, bytes_per_particle: int = TOY_BYTES_PER_PARTICLE) -> None:
    """Refuse, before any work, a particle count whose one vectorized pass would not fit in memory
    (a quarter of it, by the rough bound ``bytes_per_particle``)."""
    need, have = particles * bytes_per_particle, memory_bytes()
    if need > have // 4:
        raise ValueError(
            f"{option}: {particles} particles in one estimate need about {need / 2**30:.0f} GiB, more than a "
            f"quarter of this machine's {have / 2**30:.0f} GiB; at most {have // 4 // bytes_per_particle} fit"
        )


def text(option: str) -> Any:
    """An argument type: a non-empty string (a path: ``--out ''`` would mean the current folder)."""

    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"expected a non-empty path or name for {option}, got {value!r}")
        return value

    return parse


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (Python's, torch's CPU or CUDA allocator's, XLA's)."""
    if isinstance(error, MemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in message for sign in ("can't allocate memory", "out of memory", "RESOURCE_EXHAUSTED")
    )
