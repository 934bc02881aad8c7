"""Matplotlib figures of measured gradient statistics (framework-free; the Agg backend, no screen).

Every figure has a title, labelled axes and its legend outside the plotting area. Variances are drawn
on log axes as points with their 95% interval as whiskers (a bar's length means nothing on a log
axis); log axes get enough labelled ticks however narrow their range, epochs get integer ticks.
"""

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
from matplotlib import ticker  # noqa: E402
from matplotlib.axis import Axis  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .report import atomic_write_bytes  # noqa: E402

_COLOURS: list[str] = plt.rcParams["axes.prop_cycle"].by_key()["color"]
_MARKERS = "osD^v<>P"


def save_figure(fig: plt.Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


class _LogTicks(ticker.Locator):
    """Major ticks of a log axis, at least three in view however narrow its range, and evenly spread:
    powers of ten where the view spans enough decades (thinned to about ``most``), else 1 and 3 times
    them, else 1, 2 and 5 times them (at most ``most`` of either), else evenly spaced values (a narrow
    log range is nearly linear)."""

    def __init__(self, most: int) -> None:
        self.most = most

    def __call__(self) -> np.ndarray:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        vmin, vmax = sorted((vmin, vmax))
        for subs in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0)):
            ticks = ticker.LogLocator(subs=subs, numticks=self.most).tick_values(vmin, vmax)
            shown = np.count_nonzero((ticks >= vmin) & (ticks <= vmax))
            if shown >= 3 and (len(subs) == 1 or shown <= self.most):
                return ticks
        return ticker.MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3).tick_values(vmin, vmax)


class _LogLabels(ticker.Formatter):
    """Tick labels of a log axis: plain numbers when every tick lies in [0.01, 10^4), else ``m×10^k``
    (``10^k`` when m is 1) in mathtext; m to at most 4 significant digits."""

    plain = False

    def set_locs(self, locs: Sequence[float]) -> None:
        super().set_locs(locs)
        low, high = self.axis.get_view_interval()
        shown = [x for x in locs if min(low, high) <= x <= max(low, high)]
        self.plain = all(0.01 <= x < 1e4 for x in shown)

    def __call__(self, x: float, pos: int | None = None) -> str:
        if self.plain:
            return f"{x:g}"
        mantissa, exponent = f"{x:.3e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        power = f"10^{{{int(exponent)}}}"
        return "$\\mathdefault{" + (power if mantissa == "1" else f"{mantissa}\\times{power}") + "}$"


def _log_ticks(axis: Axis, most: int = 6) -> None:
    """Label a log-scaled ``axis`` with :class:`_LogTicks` (at most about ``most`` labels) and
    :class:`_LogLabels`, and leave its minor ticks, drawn for the grid, unlabelled."""
    axis.set_major_locator(_LogTicks(most))
    axis.set_major_formatter(_LogLabels())
    axis.set_minor_locator(ticker.LogLocator(subs="auto"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _integer_ticks(axis: Axis) -> None:
    """Ticks at integers only (epochs)."""
    axis.set_major_locator(ticker.MaxNLocator(integer=True))


def plot_toy_sweep(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], theta: float, reps: int) -> Path:
    """Log-log variance of the N-sample gradient estimate against N: measured points with their
    confidence intervals, one colour per estimator and one marker per backend, and the closed form
    sigma^2 / N as a line where it exists. With several series each is drawn at N times its own
    factor near 1 (named in the legend), so that no series hides another."""
    fig, ax = plt.subplots(figsize=(6.4, 5.2), layout="constrained")
    series = sorted({(r["estimator"], r["backend"]) for r in rows})
    estimators = sorted({e for e, _ in series})
    colours = dict(zip(estimators, itertools.cycle(_COLOURS)))
    markers = dict(zip(sorted({b for _, b in series}), _MARKERS))
    for estimator in estimators:
        # a closed form of 0 (an antithetic pair's loc gradient) has no place on a log axis
        line = sorted({(r["N"], r["closed_form_variance"]) for r in rows
                       if r["estimator"] == estimator and np.isfinite(r["closed_form_variance"])
                       and r["closed_form_variance"] > 0})
        if line:
            ax.plot(*np.array(line).T, "-", color=colours[estimator], alpha=0.6, label=f"{estimator}: closed form")
    samples = [r["N"] for r in rows]
    step = 0.02 * max(1.0, np.log10(max(samples) / min(samples)))  # decades between neighbouring series
    for k, (estimator, backend) in enumerate(series):
        pts = sorted((r["N"], r["variance"], r["variance_ci_low"], r["variance_ci_high"])
                     for r in rows if (r["estimator"], r["backend"]) == (estimator, backend))
        n, var, low, high = np.array(pts).T
        shift = 10 ** (step * (k - (len(series) - 1) / 2))
        where = f", drawn at {shift:.3g} N" if len(series) > 1 else ""
        ax.errorbar(n * shift, var, yerr=[var - low, high - var], fmt=markers[backend], color=colours[estimator],
                    capsize=3, label=f"{estimator}: measured ({backend}{where})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_ticks(ax.xaxis)
    _log_ticks(ax.yaxis, most=8)
    ax.set_xlabel("samples per estimate, N")
    ax.set_ylabel("variance of the gradient estimate")
    ax.set_title(f"d/dθ E[x²], x ~ N(θ={theta:g}, 1): {reps} repetitions, 95% CIs")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)
    return save_figure(fig, path)


def plot_elbo_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], test_label: str) -> Path:
    """ELBO (nats per image) against epoch, one colour per estimator: test (solid, with ±2
    standard-error bands) and training (dashed, the epoch's minibatch average); legend on the right."""
    fig, ax = plt.subplots(figsize=(8.4, 4.4), layout="constrained")
    styles = [Line2D([], [], color="0.4", linestyle="-", label=test_label)]
    for i, estimator in enumerate(dict.fromkeys(h["estimator"] for h in history)):
        colour = _COLOURS[i % len(_COLOURS)]
        rows = [h for h in history if h["estimator"] == estimator]
        epoch = np.array([h["epoch"] for h in rows])
        test = np.array([h["test_elbo"] for h in rows])
        se = np.array([h["test_elbo_se"] for h in rows])
        ax.plot(epoch, test, "-", color=colour, label=estimator)
        ax.fill_between(epoch, test - 2 * se, test + 2 * se, color=colour, alpha=0.2)
        trained = [(h["epoch"], h["train_elbo"]) for h in rows if np.isfinite(h["train_elbo"])]
        if trained:  # a single epoch's average is a point, not a line
            ax.plot(*np.array(trained).T, "--", color=colour, marker="o" if len(trained) == 1 else None)
    if any(np.isfinite(h["train_elbo"]) for h in history):
        styles.append(Line2D([], [], color="0.4", linestyle="--", label="train (minibatch average)"))
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image)")
    ax.set_title("VAE ELBO by gradient estimator")
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    fig.legend(handles=handles + styles, loc="outside right upper", fontsize=8)
    return save_figure(fig, path)


def plot_group_variance(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], x: str = "epoch") -> Path:
    """Total gradient variance (log scale, with its interval) and mean SNR of each parameter group
    against ``x`` (``"epoch"`` or ``"step"``); colour: the estimator measured, line style: the estimator
    the model was trained with where the rows say (a legend for each)."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    measured = list(dict.fromkeys(r["measured"] for r in rows))
    trained = list(dict.fromkeys(r.get("trained_with") for r in rows))
    colours = dict(zip(measured, itertools.cycle(_COLOURS)))
    styles = dict(zip(trained, itertools.cycle(zip(itertools.cycle(["-", "--", ":", "-."]), _MARKERS))))
    fig, axes = plt.subplots(2, len(groups), figsize=(5.6 * len(groups), 7.6), squeeze=False, sharex=True,
                             layout="constrained")
    for col, group in enumerate(groups):
        for m in measured:
            for t in trained:
                pts = [r for r in rows if (r["group"], r["measured"], r.get("trained_with")) == (group, m, t)]
                if not pts:
                    continue
                epoch = np.array([r[x] for r in pts])
                total = np.array([r["total_variance"] for r in pts])
                low = np.array([r["ci_low"] for r in pts])
                high = np.array([r["ci_high"] for r in pts])
                # a bootstrap-t interval from few repetitions need not contain its estimate
                yerr = [np.clip(total - low, 0, None), np.clip(high - total, 0, None)]
                line, marker = styles[t]
                axes[0, col].errorbar(epoch, total, yerr=yerr, linestyle=line, marker=marker, color=colours[m],
                                      capsize=3, markersize=4)
                axes[1, col].plot(epoch, [r["mean_snr"] for r in pts], linestyle=line, marker=marker,
                                  color=colours[m], markersize=4)
        axes[0, col].set_title(f"{group} parameters")
        axes[0, col].set_ylabel("total variance (sum over elements)")
        axes[1, col].set_ylabel("mean SNR |mean| / sd")
        axes[1, col].set_xlabel(x)
        _integer_ticks(axes[1, col].xaxis)
        for ax in axes[:, col]:
            ax.set_yscale("log")
            _log_ticks(ax.yaxis, most=8)
            ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Gradient variance (95% CIs) and signal-to-noise ratio by parameter group")
    legend = {"fontsize": 8, "title_fontsize": 8, "ncol": 2}
    fig.legend(handles=[Line2D([], [], color=colours[m], label=m) for m in measured], loc="outside lower left",
               title="gradient measured (colour)", **legend)
    if trained != [None]:
        fig.legend(handles=[Line2D([], [], color="0.4", linestyle=line, marker=marker, markersize=4, label=t)
                            for t, (line, marker) in styles.items()],
                   loc="outside lower right", title="model trained with (line and marker)", **legend)
    return save_figure(fig, path)


def plot_image_grid(
    rows: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike[str],
    title: str = "Test images, their reconstructions and prior samples (pixel probabilities, black = 1)",
) -> Path:
    """A grid of square grayscale images under ``title``, one labelled row per ``(label, images (n,
    side * side))``; pixel values in [0, 1] (probabilities for reconstructions and samples). Each row
    is one strip (images side by side, one-pixel white gaps): one axes per row, not per image, which
    keeps the figure fast to draw with many rows."""
    n = max(len(images) for _, images in rows)
    side = int(round(np.sqrt(rows[0][1].shape[1])))
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.9 * n + 1.6, 0.95 * len(rows) + 0.4), squeeze=False,
                             layout="constrained")
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
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _variance_points(
    ax: plt.Axes, rows: Sequence[dict[str, Any]], value: str, low: str | None, high: str | None, groups: list[str]
) -> None:
    """One row per measured estimator (rows' ``measured``, the first on top): ``value`` of each
    parameter group as a point (its own colour and marker, rows dodged apart) on a log axis, with
    ``[low, high]`` as whiskers when given."""
    measured = list(dict.fromkeys(r["measured"] for r in rows))
    dodge = 0.5 / len(groups)
    for g, group in enumerate(groups):
        pts = {r["measured"]: r for r in rows if r["group"] == group}
        names = [m for m in measured if m in pts]
        y = np.array([measured.index(m) for m in names]) + (g - (len(groups) - 1) / 2) * dodge
        v = np.array([pts[m][value] for m in names])
        xerr = None
        if low and high:
            lo = np.array([pts[m][low] for m in names])
            hi = np.array([pts[m][high] for m in names])
            # a bootstrap-t interval from few repetitions need not contain its estimate
            xerr = [np.clip(v - lo, 0, None), np.clip(np.where(np.isfinite(hi), hi, v) - v, 0, None)]
        ax.errorbar(v, y, xerr=xerr, fmt=_MARKERS[g % len(_MARKERS)], color=_COLOURS[g % len(_COLOURS)],
                    capsize=3, label=group)
    ax.set_yticks(range(len(measured)), measured, fontsize=8)
    ax.set_ylim(len(measured) - 0.5, -0.5)
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, most=5)
    ax.grid(True, which="both", alpha=0.3)


def plot_elbo_and_variance(
    history: Sequence[dict[str, Any]], variance: Sequence[dict[str, Any]], path: str | os.PathLike[str],
    test_label: str, group: str = "encoder",
) -> Path:
    """Side by side: the test ELBO of each run against epoch (±2 standard-error bands), and the
    per-sample total variance of ``group``'s gradient (log scale, with its interval) of every
    estimator at the last measurement, all on the same parameters (the first measured run's)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.25, 1]})
    for i, estimator in enumerate(dict.fromkeys(h["estimator"] for h in history)):
        rows = [h for h in history if h["estimator"] == estimator]
        epoch = np.array([h["epoch"] for h in rows])
        test = np.array([h["test_elbo"] for h in rows])
        se = np.array([h["test_elbo_se"] for h in rows])
        colour = _COLOURS[i % len(_COLOURS)]
        left.plot(epoch, test, ["-", "--", ":", "-."][i // len(_COLOURS) % 4], color=colour, label=estimator)
        left.fill_between(epoch, test - 2 * se, test + 2 * se, color=colour, alpha=0.2)
        relaxed = [(h["epoch"], h.get("relaxed_test_elbo", np.nan)) for h in rows]
        relaxed = [pt for pt in relaxed if np.isfinite(pt[1])]
        if relaxed:
            left.plot(*np.array(relaxed).T, ":", color=colour, label=f"{estimator}: its relaxed objective")
    trained = [h["test_elbo"] for h in history if h["epoch"] > 0]
    if len({h["epoch"] for h in history}) > 2:  # the untrained model's ELBO would squash the curves
        low, high = min(trained), max(trained)
        left.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    _integer_ticks(left.xaxis)
    left.set_xlabel("epoch")
    left.set_ylabel("ELBO (nats per image)")
    left.set_title(f"{test_label}, by training estimator (epoch 0: {history[0]['test_elbo']:.1f})")
    left.grid(True, alpha=0.3)
    epoch, trained = variance[-1]["epoch"], variance[0]["trained_with"]
    last = [r for r in variance if (r["epoch"], r["trained_with"], r["group"]) == (epoch, trained, group)]
    _variance_points(right, last, "per_sample_variance", "per_sample_ci_low", "per_sample_ci_high", [group])
    right.set_xlabel(f"per-sample total variance of the {group} gradient (variance x particles)")
    right.set_ylabel("estimator measured")
    right.set_title(f"epoch {epoch}, parameters of the run trained with {trained}; 95% CIs", fontsize=9)
    fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8,
               title="training estimator (test ELBO)", title_fontsize=8)
    return save_figure(fig, path)


def plot_compare(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str) -> Path:
    """Two panels (log scale) of each estimator spec, one point per parameter group: the per-sample
    total variance (variance of the estimate x particles) with its interval, and the work-normalized
    variance (variance of the estimate x seconds per estimate)."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    measured = list(dict.fromkeys(r["measured"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.6 + 0.45 * len(measured) * max(1, len(groups) / 1.5)),
                                      layout="constrained", sharey=True)
    _variance_points(left, rows, "per_sample_variance", "per_sample_ci_low", "per_sample_ci_high", groups)
    left.set_title("per-sample variance, 95% CIs", fontsize=9)
    left.set_xlabel("total variance x particles")
    left.set_ylabel("estimator")
    _variance_points(right, rows, "variance_x_seconds", None, None, groups)
    right.set_title("variance x cost", fontsize=9)
    right.set_xlabel("total variance x seconds per estimate")
    if len(groups) > 1:
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncol=len(groups), fontsize=8,
                   title="parameters", title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
