"""A block with its own random numbers: torch's, NumPy's and Python's generators seeded, and restored after."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


def seed_torch(seed: int) -> None:
    """``torch.manual_seed(seed)``, except that where no accelerator is available only the CPU generator
    is seeded: ``torch.manual_seed`` would also queue a seed for each lazily initialised accelerator
    module, formatting a stack trace for each (a tenth of a millisecond, paid by every vectorized pass of
    :func:`~ppl_reparam.pyro.gradient_variance` and every rerun of a measure-valued or REBAR site)."""
    accelerator = getattr(torch, "accelerator", None)  # (torch >= 2.6; before it, seed every device)
    if accelerator is None or accelerator.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def seed_all(seed: int) -> None:
    """``pyro.set_rng_seed(seed)``: seed torch (:func:`seed_torch`), NumPy and ``random``."""
    seed_torch(seed)
    random.seed(seed)
    np.random.seed(seed)


@contextmanager
def isolated_rng(seed: int):
    """Seed torch, numpy and random for the block, and restore the caller's RNG state after it."""
    state = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    seed_all(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
