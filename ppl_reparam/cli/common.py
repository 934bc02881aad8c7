"""What the subcommands share: argument types, the thread policy of a command, signals."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def int_list(text: str) -> tuple[int, ...]:
    """An argument type: comma-separated integers."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def at_least(low: int):
    """An argument type: an integer of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


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


@contextmanager
def threads(n: int) -> Iterator[None]:
    """At most ``n`` threads for torch's CPU kernels and for NumPy's BLAS in the block. The
    networks and the bootstrap's matrices here are small: on a busy 2-core machine two threads
    made an SVI step 25 times slower than one (thread hand-offs, not arithmetic)."""
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:  # the NumPyro backend runs without torch
        torch = None
    previous = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        if torch:
            torch.set_num_threads(previous)
