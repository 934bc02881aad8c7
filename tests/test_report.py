"""Tables from compare_estimators as CSV, JSON and Markdown; atomic writes."""

import csv
import json
import os

import numpy as np
import pytest

from ppl_reparam.models.toy_gaussian import ToyGaussian
from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO, compare_estimators
from ppl_reparam.report import atomic_write_text, gradient_rows, markdown_table, write_csv, write_json


def test_compare_estimators_table(tmp_path):
    toy = ToyGaussian(2.0, learn_scale=True)
    results = compare_estimators(
        toy.model, toy.guide,
        {"score": ScoreFunctionELBO(num_particles=10, vectorize_particles=True, analytic_kl=True),
         "pathwise": PathwiseELBO(num_particles=10, vectorize_particles=True, analytic_kl=True)},
        num_reps=50, seed=0,
    )
    rows = gradient_rows(results)
    assert [(r["estimator"], r["parameter"]) for r in rows] == [
        ("score", "theta"), ("score", "sigma"), ("pathwise", "theta"), ("pathwise", "sigma")]
    # same parameter values for both: the pathwise theta gradient 2x has mean 4, variance 4 / 10
    assert rows[2]["mean"] == pytest.approx(4.0, abs=5 * np.sqrt(0.4 / 50))
    write_csv(rows, tmp_path / "t.csv")
    assert list(csv.DictReader(open(tmp_path / "t.csv")))[1]["parameter"] == "sigma"
    write_json(rows, tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())[3]["estimator"] == "pathwise"
    table = markdown_table(rows)
    assert table.splitlines()[0].startswith("| estimator | parameter |") and len(table.splitlines()) == 6


def test_vector_parameters_get_one_row_per_element():
    from ppl_reparam.stats import GradientStats

    stats = GradientStats.from_samples({"w": np.random.default_rng(0).normal(size=(10, 2, 2))}, 1, 0.1)
    assert [r["parameter"] for r in gradient_rows({"e": stats})] == ["w[0,0]", "w[0,1]", "w[1,0]", "w[1,1]"]


def test_json_has_no_nan_and_writes_are_atomic(tmp_path, monkeypatch):
    write_json({"x": float("nan"), "y": np.float64(2.0)}, tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": 2.0}
    target = tmp_path / "b.txt"
    atomic_write_text(target, "old")
    assert oct(os.stat(target).st_mode & 0o777) != "0o600"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"  # the old file is intact and no temporary file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt"]
