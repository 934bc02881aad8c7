"""What the subcommands share: argument types, the thread policy of a command, signals."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ..threads import auto_threads, limited_threads


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


def threads(n: int | None, work: int | None = None) -> AbstractContextManager[None]:
    """The command's thread policy (:mod:`ppl_reparam.threads`): ``--threads`` if given, else one
    thread for small work. Load torch first if the command uses it, so that the policy reaches it."""
    return limited_threads(auto_threads(work, n))
