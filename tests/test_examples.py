"""Every script in examples/ runs on small settings and shows what its docstring says."""

import importlib.util
import math
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"




def load(name: str):
    """Import ``examples/<name>.py`` as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    assert {p.stem for p in EXAMPLES.glob("*.py")} == {
        "reuse_mean_field", "swap_estimators", "compare_estimators", "variance_monitor"
    }


def test_reuse_mean_field(capsys):
    summary = load("reuse_mean_field").main(num_steps=20)
    assert set(summary) == {"mu", "tau", "theta"}
    assert summary["theta"][0].shape == (8,)
    assert all(torch.isfinite(t).all() for pair in summary.values() for t in pair)
    assert (summary["tau"][0] > 0).all()
    assert "tau   Gamma" in capsys.readouterr().out


def test_swap_estimators_changes_only_the_named_sites():
    rows = load("swap_estimators").main(num_reps=10)
    by_choice = {}
    for row in rows:
        by_choice.setdefault(row["estimator"], {})[row["parameter"]] = row["variance"]
    # Same seed: the sites left pathwise give the same gradients; the site switched to the score
    # function does not.
    pathwise, swapped = by_choice["hand-written, all pathwise"], by_choice["hand-written, score on scale"]
    assert swapped["loc_mean"] == pathwise["loc_mean"] and swapped["loc_sd"] == pathwise["loc_sd"]
    assert swapped["log_scale_mean"] != pathwise["log_scale_mean"]
    pathwise, swapped = by_choice["AutoNormal, all pathwise"], by_choice["AutoNormal, score on loc"]
    assert swapped["AutoNormal.locs.scale"] == pathwise["AutoNormal.locs.scale"]
    assert swapped["AutoNormal.locs.loc"] != pathwise["AutoNormal.locs.loc"]
    assert all(math.isfinite(v) for choice in by_choice.values() for v in choice.values())


def test_compare_estimators():
    table = load("compare_estimators").main(num_reps=10)
    for name in ("| score |", "| score + RLOO baseline |", "| pathwise |"):
        assert name in table
    assert "latent_fairness.mean" in table and "latent_fairness.concentration" in table
    assert len(table.splitlines()) == 2 + 3 * 2


def test_variance_monitor_measures_the_users_loop(tmp_path):
    rows = load("variance_monitor").main(steps=5, every=2, num_reps=10, out=str(tmp_path))
    assert {(r["step"], r["measured"], r["group"]) for r in rows} == {
        (s, m, g) for s in (0, 2, 4) for m in ("score", "pathwise") for g in ("encoder", "decoder")
    }
    encoder = {(r["step"], r["measured"]): r["total_variance"] for r in rows if r["group"] == "encoder"}
    # the score function's encoder gradient is far noisier at the initial weights (README: about 6,000x)
    assert encoder[0, "score"] > 100 * encoder[0, "pathwise"]
    assert (tmp_path / "variance.csv").exists() and (tmp_path / "variance.png").exists()
