"""A block with its own random numbers: torch's, NumPy's and Python's generators seeded, and restored after."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import pyro
import torch


@contextmanager
def isolated_rng(seed: int):
    """Seed torch, numpy and random for the block, and restore the caller's RNG state after it."""
    state = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
