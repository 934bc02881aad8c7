"""Matplotlib figures of measured gradient statistics (framework-free; the Agg backend, no screen)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .report import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_toy_sweep(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], theta: float, reps: int) -> Path:
    """Log-log variance of the N-sample gradient estimate against N: measured points with their
    confidence intervals, and the closed form sigma^2 / N as a line, one colour per estimator."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    series = sorted({(r["backend"], r["estimator"]) for r in rows})
    estimators = sorted({e for _, e in series})
    colours = dict(zip(estimators, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    backends = sorted({b for b, _ in series})
    markers = dict(zip(backends, "osD^v"))
    for estimator in estimators:
        line = sorted((r["N"], r["closed_form_variance"]) for r in rows if r["estimator"] == estimator)
        n, exact = np.array(line).T
        ax.plot(n, exact, "-", color=colours[estimator], alpha=0.6, label=f"{estimator}: closed form")
    for backend, estimator in series:
        pts = sorted((r["N"], r["variance"], r["variance_ci_low"], r["variance_ci_high"])
                     for r in rows if (r["backend"], r["estimator"]) == (backend, estimator))
        n, var, low, high = np.array(pts).T
        ax.errorbar(n, var, yerr=[var - low, high - var], fmt=markers[backend], color=colours[estimator],
                    capsize=3, label=f"{estimator}: measured ({backend})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("samples per estimate, N")
    ax.set_ylabel("variance of the gradient estimate")
    ax.set_title(f"d/dθ E[x²], x ~ N(θ={theta:g}, 1): {reps} repetitions, 95% CIs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
