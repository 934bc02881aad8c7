"""Matplotlib figures of measured gradient statistics (framework-free; the Agg backend, no screen)."""

from __future__ import annotations

import io
import itertools
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


def plot_elbo_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], test_label: str) -> Path:
    """ELBO (nats per image) against epoch, one colour per estimator: training (dashed, the epoch's
    minibatch average) and test (solid, with ±2 standard-error bands)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, estimator in zip(colours, dict.fromkeys(h["estimator"] for h in history)):
        rows = [h for h in history if h["estimator"] == estimator]
        epoch = np.array([h["epoch"] for h in rows])
        test = np.array([h["test_elbo"] for h in rows])
        se = np.array([h["test_elbo_se"] for h in rows])
        ax.plot(epoch, test, "-", color=colour, label=f"{estimator}: {test_label}")
        ax.fill_between(epoch, test - 2 * se, test + 2 * se, color=colour, alpha=0.2)
        trained = [(h["epoch"], h["train_elbo"]) for h in rows if np.isfinite(h["train_elbo"])]
        if trained:
            ax.plot(*np.array(trained).T, "--", color=colour, label=f"{estimator}: train (minibatch average)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image)")
    ax.set_title("VAE ELBO by gradient estimator")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_group_variance(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Total gradient variance (log scale, with its interval) and mean SNR of each parameter group
    against epoch; colour: the estimator measured, line style: the estimator the model was trained with."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    measured = list(dict.fromkeys(r["measured"] for r in rows))
    trained = list(dict.fromkeys(r["trained_with"] for r in rows))
    colours = dict(zip(measured, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = dict(zip(trained, itertools.cycle(["-o", "--s", ":^", "-.v", "-D", "--P"])))
    fig, axes = plt.subplots(2, len(groups), figsize=(5.6 * len(groups), 7.6), squeeze=False, sharex=True,
                             layout="constrained")
    for col, group in enumerate(groups):
        for m in measured:
            for t in trained:
                pts = [r for r in rows if (r["group"], r["measured"], r["trained_with"]) == (group, m, t)]
                if not pts:
                    continue
                epoch = np.array([r["epoch"] for r in pts])
                total = np.array([r["total_variance"] for r in pts])
                low = np.array([r["ci_low"] for r in pts])
                high = np.array([r["ci_high"] for r in pts])
                label = f"{m} gradient, model trained with {t}"
                # a bootstrap-t interval from few repetitions need not contain its estimate
                yerr = [np.clip(total - low, 0, None), np.clip(high - total, 0, None)]
                axes[0, col].errorbar(epoch, total, yerr=yerr, fmt=styles[t],
                                      color=colours[m], capsize=3, markersize=4, label=label)
                axes[1, col].plot(epoch, [r["mean_snr"] for r in pts], styles[t], color=colours[m],
                                  markersize=4, label=label)
        axes[0, col].set_yscale("log")
        axes[0, col].set_title(f"{group} parameters")
        axes[0, col].set_ylabel("total variance (sum over elements)")
        axes[1, col].set_yscale("log")
        axes[1, col].set_ylabel("mean SNR |mean| / sd")
        axes[1, col].set_xlabel("epoch")
        for ax in axes[:, col]:
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    return save_figure(fig, path)


def plot_image_grid(rows: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike[str]) -> Path:
    """A grid of square grayscale images, one labelled row per ``(label, images (n, side * side))``;
    pixel values in [0, 1] (probabilities for reconstructions and samples). Each row is one strip
    (images side by side, one-pixel white gaps): one axes per row, not per image, which keeps the
    figure fast to draw with many rows."""
    n = max(len(images) for _, images in rows)
    side = int(round(np.sqrt(rows[0][1].shape[1])))
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.9 * n + 1.6, 0.95 * len(rows)), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows):
        strip = np.zeros((side, n * (side + 1) - 1))
        for j, image in enumerate(images):
            strip[:, j * (side + 1) : j * (side + 1) + side] = image.reshape(side, side)
        ax.imshow(strip, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    return save_figure(fig, path)


def _variance_bars(
    ax: plt.Axes, rows: Sequence[dict[str, Any]], value: str, low: str | None, high: str | None, groups: list[str]
) -> None:
    """Grouped horizontal bars of ``value`` per measured estimator (rows' ``measured``), one colour per
    parameter group, with ``[low, high]`` error bars when given; log scale."""
    measured = list(dict.fromkeys(r["measured"] for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    height = 0.8 / len(groups)
    for g, (group, colour) in enumerate(zip(groups, colours)):
        pts = {r["measured"]: r for r in rows if r["group"] == group}
        y = np.array([i + (g - (len(groups) - 1) / 2) * height for i, m in enumerate(measured) if m in pts])
        v = np.array([pts[m][value] for m in measured if m in pts])
        xerr = None
        if low and high:
            lo = np.array([pts[m][low] for m in measured if m in pts])
            hi = np.array([pts[m][high] for m in measured if m in pts])
            xerr = [np.clip(v - lo, 0, None), np.clip(np.where(np.isfinite(hi), hi, v) - v, 0, None)]
        ax.barh(y, v, height=height, color=colour, xerr=xerr, capsize=3, label=group, alpha=0.85)
    ax.set_yticks(range(len(measured)), measured, fontsize=8)
    if not ax.yaxis_inverted():  # first spec on top (axes sharing y are inverted once)
        ax.invert_yaxis()
    ax.set_xscale("log")
    ax.grid(True, axis="x", which="both", alpha=0.3)


def plot_elbo_and_variance(
    history: Sequence[dict[str, Any]], variance: Sequence[dict[str, Any]], path: str | os.PathLike[str],
    test_label: str, group: str = "encoder",
) -> Path:
    """Side by side: the test ELBO of each run against epoch (±2 standard-error bands), and the
    per-sample total variance of ``group``'s gradient (log scale, with its interval) of every
    estimator at the last measurement, all on the same parameters (the first measured run's)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.25, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, estimator in enumerate(dict.fromkeys(h["estimator"] for h in history)):
        rows = [h for h in history if h["estimator"] == estimator]
        epoch = np.array([h["epoch"] for h in rows])
        test = np.array([h["test_elbo"] for h in rows])
        se = np.array([h["test_elbo_se"] for h in rows])
        colour = colours[i % len(colours)]
        left.plot(epoch, test, ["-", "--", ":", "-."][i // len(colours) % 4], color=colour, label=estimator)
        left.fill_between(epoch, test - 2 * se, test + 2 * se, color=colour, alpha=0.2)
        relaxed = [(h["epoch"], h.get("relaxed_test_elbo", np.nan)) for h in rows]
        relaxed = [pt for pt in relaxed if np.isfinite(pt[1])]
        if relaxed:
            left.plot(*np.array(relaxed).T, ":", color=colour, label=f"{estimator}: its relaxed objective")
    trained = [h["test_elbo"] for h in history if h["epoch"] > 0]
    if trained:  # the untrained model's ELBO would squash the curves
        low, high = min(trained), max(trained)
        left.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    left.set_xlabel("epoch")
    left.set_ylabel("ELBO (nats per image)")
    left.set_title(f"{test_label}, by training estimator (epoch 0: {history[0]['test_elbo']:.1f})")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    epoch, trained = variance[-1]["epoch"], variance[0]["trained_with"]
    last = [r for r in variance if (r["epoch"], r["trained_with"], r["group"]) == (epoch, trained, group)]
    _variance_bars(right, last, "per_sample_variance", "per_sample_ci_low", "per_sample_ci_high", [group])
    right.set_xlabel(f"per-sample total variance of the {group} gradient (variance x particles)")
    right.set_title(f"epoch {epoch}, parameters of the run trained with {trained}; 95% CIs", fontsize=9)
    return save_figure(fig, path)


def plot_compare(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str) -> Path:
    """Two bar charts (log scale) of each estimator spec, one bar per parameter group: the per-sample
    total variance (variance of the estimate x particles) with its interval, and the work-normalized
    variance (variance of the estimate x seconds per estimate)."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    measured = list(dict.fromkeys(r["measured"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.45 * len(measured) * max(1, len(groups) / 1.5)),
                                      layout="constrained", sharey=True)
    _variance_bars(left, rows, "per_sample_variance", "per_sample_ci_low", "per_sample_ci_high", groups)
    left.set_xlabel("per-sample variance: total variance x particles (95% CI)")
    _variance_bars(right, rows, "variance_x_seconds", None, None, groups)
    right.set_xlabel("variance x cost: total variance x seconds per estimate")
    if len(groups) > 1:
        left.legend(title="parameters", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
