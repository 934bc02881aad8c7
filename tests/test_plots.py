"""The figures the commands write can be read: every data panel titled (or the figure), both axes
labelled, no tick labels overlapping, legends outside the data, log axes with at least three labelled
ticks, integer epochs, and variances drawn as points with whiskers, not bars.

Each command runs at a tiny size through ``ppl_reparam.cli.main``; ``plots.save_figure`` is wrapped
so that every figure a command saves is checked, while still open, and kept for the test (the command
still writes its PNG)."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from ppl_reparam import plots
from ppl_reparam.cli import main

SMALL_VAE = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--variance-reps", "5", "--test-particles", "4"]
VAE_FIGURES = {"elbo.png", "variance.png", "summary.png", "images.png"}
COMMANDS = {
    "toy": (["toy", "--samples", "10,100", "--reps", "5"], {"toy.png"}),
    "toy-both-backends": (["toy", "--samples", "10,100", "--reps", "5", "--backend", "both"], {"toy.png"}),
    "toy-no-closed-form": (["toy", "--samples", "10,100", "--reps", "5", "--estimators", "score+akl,score+akl+rloo"],
                           {"toy.png"}),
    "compare-toy": (["compare", "--model", "toy", "--reps", "10"], {"compare.png"}),
    "compare-vae": (["compare", "--model", "vae", "--reps", "5", "--batch-size", "20"], {"compare.png"}),
    "vae": (["vae", *SMALL_VAE, "--compare", "--estimator", "pathwise,score"], VAE_FIGURES),
    "vae-discrete": (["vae", "--model", "discrete", *SMALL_VAE, "--compare",
                      "--estimator", "score,score+rloo:4,score+b=25,iwae-vimco:4,relaxed+t=0.5"], VAE_FIGURES),
}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, plt.Figure]:
    """Every figure saved while the test runs, by file name, each passed through :func:`check_readable`
    before it is written and closed."""
    saved: dict[str, plt.Figure] = {}
    save = plots.save_figure

    def record(fig: plt.Figure, path: str) -> Path:
        saved[Path(path).name] = fig
        check_readable(Path(path).name, fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", record)
    return saved


def data_axes(fig: plt.Figure) -> list[Axes]:
    """The axes of ``fig`` that draw something."""
    return [ax for ax in fig.axes if ax.lines or ax.collections or ax.patches or ax.images]


def shown_tick_labels(ax: Axes, which: str) -> list[Text]:
    """The visible, non-empty tick labels of the ``which`` ("x" or "y") axis of ``ax`` inside its view."""
    axis, index = (ax.xaxis, 0) if which == "x" else (ax.yaxis, 1)
    low, high = sorted(axis.get_view_interval())
    return [label for label in axis.get_ticklabels(which="both")
            if label.get_visible() and label.get_text() and low <= label.get_position()[index] <= high]


def sibling_label(ax: Axes, which: str) -> str:
    """The axis label of ``ax`` or, for a shared axis, of any axes it is shared with."""
    shared = ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()
    return "".join(getattr(other, f"get_{which}label")() for other in shared.get_siblings(ax))


def overlap_area(a: Bbox, b: Bbox) -> float:
    """Area in pixels of the intersection of ``a`` and ``b``."""
    both = Bbox.intersection(a, b)
    return 0.0 if both is None else both.width * both.height


def check_readable(name: str, fig: plt.Figure) -> None:
    """The checks every figure must pass (see the module docstring)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = data_axes(fig)
    assert axes, name
    suptitle = fig.get_suptitle()
    for ax in axes:
        where = f"{name}, axes {ax.get_title()!r}"
        assert ax.get_title() or suptitle, f"{where}: no title"
        assert sibling_label(ax, "y"), f"{where}: no y label"
        if not ax.images:  # a row of images is named by its y label alone
            assert sibling_label(ax, "x"), f"{where}: no x label"
        for which in "xy":
            labels = shown_tick_labels(ax, which)
            spans = sorted((box.x0, box.x1) if which == "x" else (box.y0, box.y1)
                           for box in (label.get_window_extent(renderer) for label in labels))
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert start >= end - 0.5, f"{where}: {which} tick labels overlap: {[t.get_text() for t in labels]}"
            if getattr(ax, f"get_{which}scale")() == "log":
                assert len(labels) >= 3, f"{where}: log {which} axis with labels {[t.get_text() for t in labels]}"
        if "epoch" in sibling_label(ax, "x"):
            ticks = [label.get_position()[0] for label in shown_tick_labels(ax, "x")]
            assert np.allclose(ticks, np.round(ticks)), f"{where}: fractional epochs {ticks}"
        if "log" in (ax.get_xscale(), ax.get_yscale()) and "variance" in ax.get_xlabel() + ax.get_ylabel():
            assert not any(isinstance(c, BarContainer) for c in ax.containers), f"{where}: bars on a log axis"
            points = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            assert points and all(c.lines[0].get_marker() not in ("None", "", None) for c in points), where
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in axes:
            assert overlap_area(box, ax.get_window_extent(renderer)) < 1, f"{name}: legend over {ax.get_title()!r}"


def legend_texts(fig: plt.Figure) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


@pytest.mark.parametrize("command", COMMANDS)
def test_figures_are_readable(command: str, figures: dict[str, plt.Figure], tmp_path: Path,
                              request: pytest.FixtureRequest) -> None:
    argv, expected = COMMANDS[command]
    if "both" in argv:
        request.getfixturevalue("quick_compiles")
    assert main([*argv, "--quiet", "--out", str(tmp_path)]) == 0
    assert set(figures) == expected
    for name in figures:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    if command == "toy-both-backends":  # each series at N times its own factor, which the legend names
        (ax,) = data_axes(figures["toy.png"])
        xs = [tuple(c.lines[0].get_xdata()) for c in ax.containers]
        assert len(xs) == 4 and len(set(xs)) == 4
        assert sum("drawn at" in text for text in legend_texts(figures["toy.png"])) == 4
    if command == "toy-no-closed-form":  # only the closed form that exists is drawn and named
        assert [t for t in legend_texts(figures["toy.png"]) if "closed form" in t] == ["score+akl: closed form"]
    if command.startswith("compare"):
        left = data_axes(figures["compare.png"])[0]
        assert any(c.has_xerr for c in left.containers)
    if command.startswith("vae"):
        summary = figures["summary.png"]
        assert any(c.has_xerr for ax in summary.axes for c in ax.containers)
        assert len(figures["elbo.png"].legends) == 1  # outside the axes (checked above)
