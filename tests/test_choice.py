"""Choosing an estimator by measured work-normalized variance: the toy picks pathwise in both backends,
the discrete VAE never the raw score function, the reasons are given, and bad requests are refused."""

from __future__ import annotations

import json

import pytest

from ppl_reparam.choice import choose
from ppl_reparam.cli import main

TOY_CANDIDATES = ["score+akl", "score+akl+rloo:4", "pathwise+akl"]


def _toy(backend):
    if backend == "pyro":
        import pyro

        from ppl_reparam.models.toy_gaussian import ToyGaussian
        from ppl_reparam.pyro.variance import choose_estimator

        pyro.clear_param_store()
        toy = ToyGaussian(theta=2.0)
    else:
        from ppl_reparam.models.toy_gaussian_numpyro import ToyGaussian
        from ppl_reparam.numpyro.variance import choose_estimator

        toy = ToyGaussian(theta=2.0)
    return choose_estimator, toy


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_the_toy_picks_pathwise(backend):
    choose_estimator, toy = _toy(backend)
    choice = choose_estimator(toy.model, toy.guide, TOY_CANDIDATES, num_reps=100, seed=0)
    assert choice.chosen == "pathwise+akl"
    assert [r["spec"] for r in choice.ranking][0] == "pathwise+akl"
    scores = [r["score"] for r in choice.ranking]
    assert scores == sorted(scores) and choice.ranking[0]["ratio_to_chosen"] == 1.0
    # per-sample variances 4 against 87 and 45.78 (closed forms): told apart at 100 repetitions
    assert choice.distinguished
    assert choice.reason().startswith("pathwise+akl: the lowest per sample variance of all parameters among 3")


def test_the_discrete_vae_never_picks_the_raw_score_function(tmp_path, capsys):
    assert main(["compare", "--model", "discrete", "--estimators", "score,score+rloo:4,score+ma,iwae-vimco:4",
                 "--choose", "encoder", "--reps", "30", "--warmup", "100", "--out", str(tmp_path), "--quiet"]) == 0
    choice = json.loads((tmp_path / "choice.json").read_text())
    assert choice["chosen"] != "score" and choice["ranking"][-1]["spec"] == "score"
    assert choice["group"] == "encoder" and choice["criterion"] == "per_sample_variance"
    assert f"chosen: {choice['reason']}" in capsys.readouterr().out


ROWS = [
    {"measured": "a", "group": "g", "particles": 1, "total_variance": 2.0, "ci_low": 1.5, "ci_high": 2.5,
     "seconds_per_estimate": 1.0},
    {"measured": "b:4", "group": "g", "particles": 4, "total_variance": 0.6, "ci_low": 0.5, "ci_high": 0.7,
     "seconds_per_estimate": 0.1},
    {"measured": "a", "group": "h", "particles": 1, "total_variance": 1.0, "ci_low": 0.5, "ci_high": 1.5,
     "seconds_per_estimate": 1.0},
]


def test_criteria_count_particles_or_seconds():
    by_particles = choose(ROWS, "g")
    assert by_particles.chosen == "a" and by_particles.ranking[1]["ratio_to_chosen"] == pytest.approx(1.2)
    assert not by_particles.distinguished  # [2.0, 2.8] overlaps [1.5, 2.5]
    assert "their intervals overlap" in by_particles.reason()
    by_seconds = choose(ROWS, "g", "variance_x_seconds")
    assert by_seconds.chosen == "b:4" and by_seconds.ranking[0]["score"] == pytest.approx(0.06)
    assert "another objective, iwae:5" in choose(ROWS, "g", objectives={"a": "iwae:5"}).reason()


def test_bad_requests():
    with pytest.raises(ValueError, match="no measurement of the parameter group 'x'; the groups are \\['g', 'h'\\]"):
        choose(ROWS, "x")
    with pytest.raises(ValueError, match="unknown criterion 'time'"):
        choose(ROWS, "g", "time")


def test_a_measure_valued_spec_is_not_ranked_by_particles():
    # its reruns of guide and model are a cost that variance x particles would leave out
    from ppl_reparam.models.toy_gaussian import ToyGaussian
    from ppl_reparam.pyro.variance import choose_estimator

    toy = ToyGaussian(2.0)
    with pytest.raises(ValueError, match=r"\['measure'\]: the measure-valued estimator costs reruns"):
        choose_estimator(toy.model, toy.guide, ["pathwise", "measure"], num_reps=10)
    chosen = choose_estimator(toy.model, toy.guide, ["pathwise", "measure"], num_reps=200,
                              criterion="variance_x_seconds")
    assert chosen.chosen == "pathwise"


def test_cli_refuses_a_group_the_model_has_not_before_any_work(tmp_path, capsys):
    assert main(["compare", "--model", "toy", "--choose", "encoder", "--out", str(tmp_path / "out")]) == 2
    assert "--choose: the toy model's parameter groups are theta, not 'encoder'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
