"""VarianceMonitor in a user-written SVI loop, both backends through one parameter: the loop runs bit for
bit as without it, each measurement is the backend's gradient_variance at that step's parameters and
seed, the files follow the run, and bad settings are refused."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ppl_reparam.study import derived_seed, resolve_groups

DATA = np.array([2.54, 0.71, -1.18, 1.57, -0.08, -0.4, 1.4, 1.84, 0.28, 0.6])
STEPS, EVERY, REPS = 7, 3, 20


class PyroLoop:
    """Normal-Normal (models/normal_normal.py) with a Normal guide, trained by Pyro SVI."""

    def __init__(self):
        import pyro
        import pyro.distributions as dist
        import torch
        from pyro.distributions import constraints

        from ppl_reparam import pyro as pr
        from ppl_reparam.models.normal_normal import model

        def guide(data):
            loc = pyro.param("q.loc", torch.tensor(0.0))
            scale = pyro.param("q.scale", torch.tensor(1.0), constraint=constraints.positive)
            pyro.sample("mu", dist.Normal(loc, scale))

        self.pyro, self.torch, self.pr = pyro, torch, pr
        self.model, self.guide = model, guide
        self.data = torch.tensor(DATA, dtype=torch.float32)

    def elbos(self):
        return {"score": self.pr.ScoreFunctionELBO(num_particles=2), "pathwise": self.pr.PathwiseELBO()}

    def run(self, monitor=None, snapshot=None):
        """Train STEPS steps; return the final parameters (and each step's, into ``snapshot``)."""
        self.pyro.clear_param_store()
        self.pyro.set_rng_seed(0)
        svi = self.pyro.infer.SVI(self.model, self.guide, self.pyro.optim.Adam({"lr": 0.1}), self.pr.PathwiseELBO())
        for step in range(STEPS):
            svi.step(self.data)
            if snapshot is not None:
                snapshot[step] = {k: v.detach().clone() for k, v in self.pyro.get_param_store().items()}
            if monitor is not None:
                monitor(step, self.data)
        return {k: v.detach().numpy().copy() for k, v in self.pyro.get_param_store().items()}

    def monitor(self, **kwargs):
        return self.pr.VarianceMonitor(self.model, self.guide, self.elbos(), **kwargs)

    def direct(self, params, elbo, seed):
        store = self.pyro.get_param_store()
        saved = {k: v.detach().clone() for k, v in store.items()}
        for k, v in params.items():
            store[k] = v
        try:
            return self.pr.gradient_variance(elbo, self.model, self.guide, self.data, num_reps=REPS, seed=seed)
        finally:
            for k, v in saved.items():
                store[k] = v


class NumPyroLoop:
    """The same model and guide in NumPyro, trained by ``svi.update``."""

    def __init__(self):
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from jax import random
        from numpyro.distributions import constraints

        from ppl_reparam import numpyro as nr

        def model(data):
            mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
            with numpyro.plate("data", len(data)):
                numpyro.sample("obs", dist.Normal(mu, 1.0), obs=data)

        def guide(data):
            loc = numpyro.param("q.loc", 0.0)
            scale = numpyro.param("q.scale", 1.0, constraint=constraints.positive)
            numpyro.sample("mu", dist.Normal(loc, scale))

        self.numpyro, self.random, self.nr = numpyro, random, nr
        self.model, self.guide = model, guide
        self.data = jnp.asarray(DATA)

    def elbos(self):
        return {"score": self.nr.ScoreFunctionELBO(num_particles=2), "pathwise": self.nr.PathwiseELBO()}

    def run(self, monitor=None, snapshot=None):
        svi = self.numpyro.infer.SVI(self.model, self.guide, self.numpyro.optim.Adam(0.1), self.nr.PathwiseELBO())
        state = svi.init(self.random.PRNGKey(0), self.data)
        for step in range(STEPS):
            state, _ = svi.update(state, self.data)
            if snapshot is not None:
                snapshot[step] = svi.get_params(state)
            if monitor is not None:
                monitor(step, svi.get_params(state), self.data)
        return {k: np.asarray(v) for k, v in svi.get_params(state).items()}

    def monitor(self, **kwargs):
        return self.nr.VarianceMonitor(self.model, self.guide, self.elbos(), **kwargs)

    def direct(self, params, elbo, seed):
        return self.nr.gradient_variance(
            elbo, self.model, self.guide, self.data, params=params, num_reps=REPS, seed=seed
        )


@pytest.fixture(params=["pyro", "numpyro"])
def loop(request):
    return PyroLoop() if request.param == "pyro" else NumPyroLoop()


def test_the_loop_runs_as_without_it_and_each_row_is_gradient_variance_at_that_step(loop, tmp_path):
    plain = loop.run()
    monitor = loop.monitor(every=EVERY, num_reps=REPS, seed=5, out=tmp_path)
    snapshot = {}
    monitored = loop.run(monitor, snapshot)
    for name in plain:
        np.testing.assert_array_equal(monitored[name], plain[name], err_msg=name)

    steps = sorted({r["step"] for r in monitor.rows})
    assert steps == list(range(0, STEPS, EVERY))
    names = list(plain)
    for step in steps:
        for j, (label, elbo) in enumerate(loop.elbos().items()):
            direct = loop.direct(snapshot[step], elbo, derived_seed(5, step, j))
            for name in names:
                (row,) = [r for r in monitor.rows if (r["step"], r["measured"], r["group"]) == (step, label, name)]
                assert row["total_variance"] == pytest.approx(float(np.sum(direct[name].variance)), rel=1e-12)
                assert row["reps"] == REPS and row["particles"] == direct.num_particles
                assert 0 < row["ci_low"] < row["ci_high"]

    with open(tmp_path / "variance.csv") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(monitor.rows) == len(steps) * 2 * len(names)
    assert (tmp_path / "variance.png").stat().st_size > 0


def test_groups_sum_their_parameters(loop):
    monitor = loop.monitor(every=1, num_reps=REPS, groups={"guide": ["q"], "scale": "q.scale"})
    snapshot = {}
    loop.run(monitor, snapshot)
    rows = [r for r in monitor.rows if r["step"] == 0 and r["measured"] == "score"]
    direct = loop.direct(snapshot[0], loop.elbos()["score"], derived_seed(0, 0, 0))
    total = {r["group"]: r["total_variance"] for r in rows}
    assert total["scale"] == pytest.approx(float(np.sum(direct["q.scale"].variance)), rel=1e-12)
    assert total["guide"] == pytest.approx(sum(float(np.sum(direct[n].variance)) for n in direct), rel=1e-12)
    assert {r["elements"] for r in rows if r["group"] == "guide"} == {2}


def test_bad_settings_are_refused(loop, tmp_path):
    with pytest.raises(ValueError, match="every must be a positive"):
        loop.monitor(every=0)
    with pytest.raises(ValueError, match="num_reps must be at least"):
        loop.monitor(num_reps=2)
    with pytest.raises(ValueError, match="elbos is empty"):
        type(loop.monitor())(loop.model, loop.guide, {})
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="file"):
        loop.monitor(out=blocker / "monitor")
    monitor = loop.monitor(every=1, num_reps=REPS, groups={"encoder": ["encoder"]})
    message = r"'encoder' .* matches no parameter; the parameters are \['q.loc', 'q.scale'\]"
    with pytest.raises(ValueError, match=message):
        loop.run(monitor)


def test_one_elbo_is_named_by_its_class():
    from ppl_reparam.monitor import named_elbos

    class MyELBO:
        pass

    assert list(named_elbos(MyELBO())) == ["MyELBO"]


def test_groups_match_whole_name_components():
    names = ["encoder.fc.weight", "encoder2.bias", "decoder.w", "encoder"]
    assert resolve_groups({"enc": ["encoder"]}, names) == {"enc": ["encoder.fc.weight", "encoder"]}
    assert resolve_groups(None, names[:2]) == {
        "encoder.fc.weight": ["encoder.fc.weight"], "encoder2.bias": ["encoder2.bias"]
    }


def test_choosing_at_every_measurement(loop, tmp_path):
    """With ``choose``, each measurement also picks the ELBO with the lowest per-sample variance of the
    group: the pathwise one here (score-function variance is far larger on this model), written to
    choices.csv; a loop can switch to ``monitor.elbos[monitor.choice.chosen]``."""
    monitor = loop.monitor(every=EVERY, num_reps=REPS, groups={"guide": ["q"]}, choose="guide", out=tmp_path)
    loop.run(monitor)
    assert [c["step"] for c in monitor.choices] == list(range(0, STEPS, EVERY))
    assert {c["chosen"] for c in monitor.choices} == {"pathwise"}
    assert monitor.choice.chosen == "pathwise" and monitor.choice.ranking[1]["spec"] == "score"
    with open(tmp_path / "choices.csv") as f:
        assert [r["chosen"] for r in csv.DictReader(f)] == ["pathwise"] * len(monitor.choices)
    with pytest.raises(ValueError, match="unknown criterion 'time'"):
        loop.monitor(choose="guide", criterion="time")


def test_a_measurement_seed_and_own_model_and_guide(loop):
    """``measure(..., seed=s)`` draws the j-th ELBO under derived_seed(s, j) and bootstraps under s (the
    seed scheme of ``ppl-reparam vae``); a (model, guide, elbo) triple is measured on its own model and
    guide; ``targets=`` must keep the monitor's names."""
    elbos = loop.elbos()
    calls = []

    def guide(*args, **kwargs):
        calls.append("own guide")
        return loop.guide(*args, **kwargs)

    monitor = type(loop.monitor())(loop.model, loop.guide, {"score": elbos["score"],
                                                              "pathwise": (loop.model, guide, elbos["pathwise"])},
                                   every=1, num_reps=REPS)
    assert monitor.elbos == elbos
    snapshot = {}
    loop.run(snapshot=snapshot)
    gv = loop.nr.gradient_variance if isinstance(loop, NumPyroLoop) else loop.pr.gradient_variance
    extra = {"params": snapshot[STEPS - 1]} if isinstance(loop, NumPyroLoop) else {}
    rows = monitor.measure(4, gv, loop.data, seed=11, **extra)
    assert calls and {r["step"] for r in rows} == {4}
    for j, (label, elbo) in enumerate(elbos.items()):
        direct = loop.direct(snapshot[STEPS - 1], elbo, derived_seed(11, j))
        (row,) = [r for r in rows if (r["measured"], r["group"]) == (label, "q.loc")]
        assert row["total_variance"] == pytest.approx(float(np.sum(direct["q.loc"].variance)), rel=1e-12)
        assert monitor.stats[label]["q.loc"].variance == pytest.approx(direct["q.loc"].variance, rel=1e-12)
    with pytest.raises(ValueError, match=r"targets must have the monitor's names \['score', 'pathwise'\]"):
        monitor.measure(0, gv, loop.data, targets={"score": (loop.model, loop.guide, elbos["score"])}, **extra)
