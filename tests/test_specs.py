"""Estimator specs: parsing, canonical form, errors, and the Pyro ELBO each one builds."""

import pytest

from ppl_reparam.pyro.baselines import ConstantBaseline, LeaveOneOutBaseline
from ppl_reparam.pyro.elbo import MeasureValuedELBO, PathwiseELBO, RebarELBO, RelaxELBO, ScoreFunctionELBO
from ppl_reparam.pyro.iwae import IWAE
from ppl_reparam.pyro.specs import make_elbo
from ppl_reparam.specs import EstimatorSpec, parse_spec, parse_specs


@pytest.mark.parametrize("text", ["score", "pathwise", "score+akl", "score+rloo:8", "score+akl+b=7",
                                  "pathwise+stl:4", "iwae", "iwae-dreg:3", "iwae-vimco", "score+ma", "score+learned",
                                  "measure", "measure+akl+indep:4", "rebar", "rebar+akl+t=2+eta=0.5:3", "relax",
                                  "relax+t=2+eta=0.5+fit=300:2"])
def test_round_trip(text):
    assert str(parse_spec(text)) == text


def test_fields():
    assert parse_spec("score+akl+b=7:10") == EstimatorSpec("score", 10, analytic_kl=True, baseline=7.0)
    assert parse_spec("iwae-dreg").particles == 5 and parse_spec("iwae-dreg").is_iwae
    assert [str(s) for s in parse_specs("score, pathwise+stl ,")] == ["score", "pathwise+stl"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("reinforce", "unknown base 'reinforce'"),
        ("score+fast", "unknown option 'fast'"),
        ("score:x", "must be an integer"),
        ("score:0", "particles must be positive"),
        ("score+b=seven", "is not a number"),
        ("pathwise+rloo", "baselines apply to the score function only"),
        ("score+stl", "stl applies to the pathwise estimator only"),
        ("score+indep", "indep applies to the measure-valued estimator only"),
        ("measure+rloo:4", "baselines apply to the score function only"),
        ("measure+anti:2", "anti and qmc apply to the pathwise estimator only"),
        ("rebar+t=0", "t must be positive"),
        ("rebar+eta=x", "'eta=x' is not a number"),
        ("score+t=2", "unknown option 't=2'"),
        ("rebar+fit=10", "unknown option 'fit=10'"),
        ("relax+fit=-1", "fit takes a number of steps"),
        ("relax+fit=x", "fit takes a number of steps"),
        ("relax+rloo:4", "baselines apply to the score function only"),
        ("iwae+akl", "take no options"),
        ("", "no estimator spec"),
    ],
)
def test_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_specs(text)


def test_make_elbo():
    elbo = make_elbo("score+rloo:4")
    assert isinstance(elbo, ScoreFunctionELBO) and isinstance(elbo.baseline, LeaveOneOutBaseline)
    assert elbo.num_particles == 4 and elbo.vectorize_particles
    assert isinstance(make_elbo("score+b=2").baseline, ConstantBaseline)
    assert isinstance(make_elbo("pathwise+stl"), PathwiseELBO) and make_elbo("pathwise+stl").stl
    iwae = make_elbo("iwae-vimco:3")
    assert isinstance(iwae, IWAE) and iwae.estimator == "score" and iwae.num_particles == 3
    with pytest.raises(ValueError, match="num_particles >= 2"):
        make_elbo("score+rloo")
    measure = make_elbo("measure+akl+indep:3")
    assert isinstance(measure, MeasureValuedELBO) and measure.analytic_kl and not measure.coupling
    assert measure.num_particles == 3 and "coupling=False" in repr(measure)
    rebar = make_elbo("rebar+t=2+eta=0.5")
    assert isinstance(rebar, RebarELBO) and (rebar.rebar_temperature, rebar.rebar_eta) == (2.0, 0.5)
    relax = make_elbo("relax+t=2+eta=0.5+fit=30")
    assert isinstance(relax, RelaxELBO)
    assert (relax.rebar_temperature, relax.rebar_eta, relax.relax_fit) == (2.0, 0.5, 30)


def test_relax_in_numpyro():
    from ppl_reparam.numpyro import RelaxELBO as NumPyroRelax
    from ppl_reparam.numpyro.specs import make_elbo as numpyro_elbo

    assert numpyro_elbo("relax+t=2+eta=0.5+fit=30:2") == NumPyroRelax(
        num_particles=2, rebar_temperature=2.0, rebar_eta=0.5, relax_fit=30)
