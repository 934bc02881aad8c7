"""Valid and invalid model/guide pairs, run under this package's ELBOs.

Adapted from Pyro's ``tests/infer/test_valid_models.py`` (Copyright Contributors to the Pyro project,
Apache-2.0; https://github.com/pyro-ppl/pyro). How the cases were adapted:

- Each model/guide pair that Pyro runs with ``Trace_ELBO``, ``TraceGraph_ELBO`` or
  ``TraceMeanField_ELBO`` is kept with its structure (plates nested, non-nested, reused, sequential,
  subsampled, ``plate_stack``, ``block_plate``, masks, scales, ``obs_mask``, factors, vectorized
  particles). Guides whose sites are non-reparameterized (Bernoulli) or that Pyro runs with
  ``TraceGraph_ELBO`` run under ``ScoreFunctionELBO``; reparameterizable guides run under both
  ``ScoreFunctionELBO`` and ``PathwiseELBO``; ``TraceMeanField_ELBO`` becomes ``analytic_kl=True``.
- ``assert_ok`` is Pyro's (an SVI step, then ``loss``, ``differentiable_loss`` and ``loss_and_grads``
  on one seed must agree), run, as Pyro's suite runs it (its ``setup.cfg`` has
  ``filterwarnings = error``), with warnings turned into errors and validation enabled.
- ``assert_error`` expects the one exception type that Pyro's own ELBO raises on the same pair
  (checked when porting), where Pyro accepts any of five; Pyro's message regexes are kept, as these
  errors come from Pyro's own checks (plates, shapes, sites), which this package's ELBOs reuse.
- Added: ``test_matches_pyro_on_same_seed`` runs each valid pair once more, on one
  seed, under this package's ELBO and under Pyro's reference ELBO on the same guide forced to the
  same estimator: ``TraceGraph_ELBO`` for ``ScoreFunctionELBO`` (which is meant to be exactly Pyro's
  ``TraceGraph_ELBO`` on a non-reparameterized guide: the same Rao-Blackwellization and plate
  handling), ``Trace_ELBO`` for ``PathwiseELBO`` and ``TraceMeanField_ELBO`` for
  ``PathwiseELBO(analytic_kl=True)``. The same samples must give the same loss and gradients.
- Enumeration (``TraceEnum_ELBO``, ``config_enumerate``, ``pyro.markov`` enumeration), TraceTMC,
  Renyi, tail-adaptive, energy distance and funsor ``collapse`` cases are left out: these ELBOs do not
  enumerate and have no such objectives.
"""

import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.reparam import LatentStableReparam
from pyro.infer.util import torch_item
from pyro.optim import Adam
from pyro.poutine.plate_messenger import block_plate
from torch.distributions import constraints

from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO, force_estimator

ELBOS = {"score": ScoreFunctionELBO, "pathwise": PathwiseELBO}
BOTH = ("score", "pathwise")
SCORE = ("score",)


@pytest.fixture(autouse=True)
def _validation():
    with pyro.validation_enabled(True):
        yield


def make_elbo(estimator, **kwargs):
    return ELBOS[estimator](**kwargs)


def assert_ok(model, guide, elbo, **kwargs):
    """Pyro's assert_ok: inference works without warnings or errors, and on one seed ``loss``,
    ``differentiable_loss`` and ``loss_and_grads`` give the same value."""
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inference = SVI(model, guide, Adam({"lr": 1e-6}), elbo)
        inference.step(**kwargs)
        pyro.set_rng_seed(0)
        loss = elbo.loss(model, guide, **kwargs)
        pyro.set_rng_seed(0)
        differentiable_loss = torch_item(elbo.differentiable_loss(model, guide, **kwargs))
        assert differentiable_loss == pytest.approx(loss, abs=0.01)
        pyro.set_rng_seed(0)
        loss_and_grads = elbo.loss_and_grads(model, guide, **kwargs)
        assert loss_and_grads == pytest.approx(loss, abs=0.01)


def assert_error(model, guide, elbo, error, match=None):
    """Pyro's assert_error, with the exception type that Pyro's own ELBO raises on this pair."""
    pyro.clear_param_store()
    inference = SVI(model, guide, Adam({"lr": 1e-6}), elbo)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(error, match=match):
            inference.step()


def assert_warning(model, guide, elbo):
    """Pyro's assert_warning: inference works but warns (deprecation warnings do not count)."""
    pyro.clear_param_store()
    inference = SVI(model, guide, Adam({"lr": 1e-6}), elbo)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        inference.step()
    assert [x for x in w if not issubclass(x.category, DeprecationWarning)], "No warnings were raised"


# ============================================================================ valid pairs
# Each case returns (model, guide); CASES lists them with the ELBO options and estimators they run
# under. They run twice: test_valid_ok (Pyro's assert_ok) and test_matches_pyro_on_same_seed.


def nonempty_model_empty_guide():
    def model():
        loc = torch.tensor([0.0, 0.0])
        scale = torch.tensor([1.0, 1.0])
        pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=loc)

    def guide():
        pass

    return model, guide


def empty_model_empty_guide():
    def model():
        pass

    def guide():
        pass

    return model, guide


def set_has_rsample(has_rsample):
    # Sparse gradients: users may turn off rsample; both settings must be correct (and this
    # package's ELBOs override the flag with their own estimator).
    def model():
        z = pyro.sample("z", dist.Normal(0, 1))
        loc = (z * 100).clamp(min=0, max=1)  # sparse gradients
        pyro.sample("x", dist.Normal(loc, 1), obs=torch.tensor(0.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("z", dist.Normal(loc, 1).has_rsample_(has_rsample))

    return model, guide


def not_has_rsample():
    def model():
        z = pyro.sample("z", dist.Normal(0, 1))
        p = z.round().clamp(min=0.2, max=0.8)  # discontinuous
        pyro.sample("x", dist.Bernoulli(p), obs=torch.tensor(0.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("z", dist.Normal(loc, 1).has_rsample_(False))

    return model, guide


def iplate(subsample_size):
    def model():
        p = torch.tensor(0.5)
        for i in pyro.plate("plate", 4, subsample_size):
            pyro.sample(f"x_{i}", dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        for i in pyro.plate("plate", 4, subsample_size):
            pyro.sample(f"x_{i}", dist.Bernoulli(p))

    return model, guide


def plate(subsample_size):
    def model():
        p = torch.tensor(0.5)
        with pyro.plate("plate", 10, subsample_size) as ind:
            pyro.sample("x", dist.Bernoulli(p).expand_by([len(ind)]))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        with pyro.plate("plate", 10, subsample_size) as ind:
            pyro.sample("x", dist.Bernoulli(p).expand_by([len(ind)]))

    return model, guide


def plate_subsample_param(subsample_size):
    def model():
        p = torch.tensor(0.5)
        with pyro.plate("plate", 10, subsample_size):
            pyro.sample("x", dist.Bernoulli(p))

    def guide():
        with pyro.plate("plate", 10, subsample_size) as ind:
            p0 = pyro.param("p0", torch.tensor(0.0), event_dim=0)
            assert p0.shape == ()
            p = pyro.param("p", 0.5 * torch.ones(10), event_dim=0)
            assert len(p) == len(ind)
            pyro.sample("x", dist.Bernoulli(p))

    return model, guide


def plate_subsample_primitive(subsample_size):
    def model():
        p = torch.tensor(0.5)
        with pyro.plate("plate", 10, subsample_size):
            pyro.sample("x", dist.Bernoulli(p))

    def guide():
        with pyro.plate("plate", 10, subsample_size) as ind:
            p0 = pyro.subsample(torch.tensor(0.0), event_dim=0)
            assert p0.shape == ()
            p = pyro.subsample(0.5 * torch.ones(10), event_dim=0)
            assert len(p) == len(ind)
            pyro.sample("x", dist.Bernoulli(p))

    return model, guide


def plate_param_size(subsample_size, shape):
    def model():
        p = torch.tensor(0.5)
        with pyro.plate("plate", 10, subsample_size):
            pyro.sample("x", dist.Bernoulli(p))

    def guide():
        with pyro.plate("plate", 10, subsample_size):
            pyro.param("p0", torch.ones(shape), event_dim=0)
            p = pyro.param("p", torch.ones(10), event_dim=0)
            pyro.sample("x", dist.Bernoulli(p))

    return model, guide


def plate_no_size():
    def model():
        p = torch.tensor(0.5)
        with pyro.plate("plate"):
            pyro.sample("x", dist.Bernoulli(p).expand_by([10]))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        with pyro.plate("plate"):
            pyro.sample("x", dist.Bernoulli(p).expand_by([10]))

    return model, guide


def iplate_iplate(subsample_size, swap):
    def model():
        p = torch.tensor(0.5)
        outer_iplate = pyro.plate("plate_0", 3, subsample_size)
        inner_iplate = pyro.plate("plate_1", 3, subsample_size)
        for i in outer_iplate:
            for j in inner_iplate:
                pyro.sample(f"x_{i}_{j}", dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        outer_iplate = pyro.plate("plate_0", 3, subsample_size)
        inner_iplate = pyro.plate("plate_1", 3, subsample_size)
        if swap:
            for j in inner_iplate:
                for i in outer_iplate:
                    pyro.sample(f"x_{i}_{j}", dist.Bernoulli(p))
        else:
            for i in outer_iplate:
                for j in inner_iplate:
                    pyro.sample(f"x_{i}_{j}", dist.Bernoulli(p))

    return model, guide


def iplate_in_model_not_guide(subsample_size):
    def model():
        p = torch.tensor(0.5)
        for _ in pyro.plate("plate", 10, subsample_size):
            pass
        pyro.sample("x", dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        pyro.sample("x", dist.Bernoulli(p))

    return model, guide


def iplate_in_guide_not_model(subsample_size):
    def model():
        p = torch.tensor(0.5)
        pyro.sample("x", dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        for _ in pyro.plate("plate", 10, subsample_size):
            pass
        pyro.sample("x", dist.Bernoulli(p))

    return model, guide


def plate_iplate():
    def model():
        p = torch.tensor(0.5)
        with pyro.plate("plate", 3, 2) as ind:
            for i in pyro.plate("iplate", 3, 2):
                pyro.sample(f"x_{i}", dist.Bernoulli(p).expand_by([len(ind)]))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        with pyro.plate("plate", 3, 2) as ind:
            for i in pyro.plate("iplate", 3, 2):
                pyro.sample(f"x_{i}", dist.Bernoulli(p).expand_by([len(ind)]))

    return model, guide


def iplate_plate():
    def model():
        p = torch.tensor(0.5)
        inner_plate = pyro.plate("plate", 3, 2)
        for i in pyro.plate("iplate", 3, 2):
            with inner_plate as ind:
                pyro.sample(f"x_{i}", dist.Bernoulli(p).expand_by([len(ind)]))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        inner_plate = pyro.plate("plate", 3, 2)
        for i in pyro.plate("iplate", 3, 2):
            with inner_plate as ind:
                pyro.sample(f"x_{i}", dist.Bernoulli(p).expand_by([len(ind)]))

    return model, guide


def plate_stack(sizes, inner_plate):
    def model():
        p = torch.tensor(0.5)
        with pyro.plate_stack("plate_stack", sizes):
            if inner_plate:
                with pyro.plate("plate", 7):
                    pyro.sample("x", dist.Bernoulli(p))
            else:
                pyro.sample("x", dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        with pyro.plate_stack("plate_stack", sizes):
            if inner_plate:
                with pyro.plate("plate", 7):
                    pyro.sample("x", dist.Bernoulli(p))
            else:
                pyro.sample("x", dist.Bernoulli(p))

    return model, guide


def nested_plate_plate():
    def model():
        p = torch.tensor(0.5, requires_grad=True)
        with pyro.plate("plate_outer", 10, 5) as ind_outer:
            pyro.sample("x", dist.Bernoulli(p).expand_by([len(ind_outer)]))
            with pyro.plate("plate_inner", 11, 6) as ind_inner:
                pyro.sample("y", dist.Bernoulli(p).expand_by([len(ind_inner), len(ind_outer)]))

    return model, model


def plate_reuse():
    def model():
        p = torch.tensor(0.5, requires_grad=True)
        plate_outer = pyro.plate("plate_outer", 10, 5, dim=-1)
        plate_inner = pyro.plate("plate_inner", 11, 6, dim=-2)
        with plate_outer as ind_outer:
            pyro.sample("x", dist.Bernoulli(p).expand_by([len(ind_outer)]))
        with plate_inner as ind_inner:
            pyro.sample("y", dist.Bernoulli(p).expand_by([len(ind_inner), 1]))
        with plate_outer as ind_outer, plate_inner as ind_inner:
            pyro.sample("z", dist.Bernoulli(p).expand_by([len(ind_inner), len(ind_outer)]))

    return model, model


def nested_plate_plate_subsample_param():
    def model():
        with pyro.plate("plate_outer", 10, 5):
            pyro.sample("x", dist.Bernoulli(0.2))
            with pyro.plate("plate_inner", 11, 6):
                pyro.sample("y", dist.Bernoulli(0.2))

    def guide():
        p0 = pyro.param("p0", 0.5 * torch.ones(4, 5), event_dim=2)
        assert p0.shape == (4, 5)
        with pyro.plate("plate_outer", 10, 5):
            p1 = pyro.param("p1", 0.5 * torch.ones(10, 3), event_dim=1)
            assert p1.shape == (5, 3)
            px = pyro.param("px", 0.5 * torch.ones(10), event_dim=0)
            assert px.shape == (5,)
            pyro.sample("x", dist.Bernoulli(px))
            with pyro.plate("plate_inner", 11, 6):
                py = pyro.param("py", 0.5 * torch.ones(11, 10), event_dim=0)
                assert py.shape == (6, 5)
                pyro.sample("y", dist.Bernoulli(py))

    return model, guide


def nonnested_plate_plate():
    def model():
        p = torch.tensor(0.5, requires_grad=True)
        with pyro.plate("plate_0", 10, 5) as ind1:
            pyro.sample("x0", dist.Bernoulli(p).expand_by([len(ind1)]))
        with pyro.plate("plate_1", 11, 6) as ind2:
            pyro.sample("x1", dist.Bernoulli(p).expand_by([len(ind2)]))

    return model, model


def three_indep_plate_at_different_depths():
    r"""
      /\
     /\ ia
    ia ia
    """

    def model():
        p = torch.tensor(0.5)
        inner_plate = pyro.plate("plate2", 10, 5)
        for i in pyro.plate("plate0", 2):
            pyro.sample(f"x_{i}", dist.Bernoulli(p))
            if i == 0:
                for j in pyro.plate("plate1", 2):
                    with inner_plate as ind:
                        pyro.sample(f"y_{j}", dist.Bernoulli(p).expand_by([len(ind)]))
            elif i == 1:
                with inner_plate as ind:
                    pyro.sample("z", dist.Bernoulli(p).expand_by([len(ind)]))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        inner_plate = pyro.plate("plate2", 10, 5)
        for i in pyro.plate("plate0", 2):
            pyro.sample(f"x_{i}", dist.Bernoulli(p))
            if i == 0:
                for j in pyro.plate("plate1", 2):
                    with inner_plate as ind:
                        pyro.sample(f"y_{j}", dist.Bernoulli(p).expand_by([len(ind)]))
            elif i == 1:
                with inner_plate as ind:
                    pyro.sample("z", dist.Bernoulli(p).expand_by([len(ind)]))

    return model, guide


def block_plate_case(by):
    block = (lambda: block_plate("plate")) if by == "name" else (lambda: block_plate(dim=-1))

    def model():
        a = pyro.sample("a", dist.Normal(0, 1))
        assert a.shape == ()
        with pyro.plate("plate", 2):
            b = pyro.sample("b", dist.Normal(0, 1))
            assert b.shape == (2,)
            with block():
                c = pyro.sample("c", dist.Normal(0, 1))
                assert c.shape == ()

    def guide():
        c = pyro.sample("c", dist.Normal(0, 1))
        assert c.shape == ()
        with pyro.plate("plate", 2):
            b = pyro.sample("b", dist.Normal(0, 1))
            assert b.shape == (2,)
            with block():
                a = pyro.sample("a", dist.Normal(0, 1))
                assert a.shape == ()

    return model, guide


def enum_discrete_not_configured():
    # test_enum_discrete_misuse_warning with enumerate_=None: no warning under Trace(Graph)_ELBO.
    def model():
        p = torch.tensor(0.5)
        pyro.sample("x", dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        pyro.sample("x", dist.Bernoulli(p), infer={"enumerate": None})

    return model, guide


def plate_shape_broadcasting():
    data = torch.ones(1000, 2)

    def model():
        with pyro.plate("num_particles", 10, dim=-3):
            with pyro.plate("components", 2, dim=-1):
                p = pyro.sample("p", dist.Beta(torch.tensor(1.1), torch.tensor(1.1)))
                assert p.shape == torch.Size((10, 1, 2))
            with pyro.plate("data", data.shape[0], dim=-2):
                pyro.sample("obs", dist.Bernoulli(p), obs=data)

    def guide():
        with pyro.plate("num_particles", 10, dim=-3):
            with pyro.plate("components", 2, dim=-1):
                pyro.sample("p", dist.Beta(torch.tensor(1.1), torch.tensor(1.1)))

    return model, guide


def dim_allocation():
    def model():
        p = torch.tensor(0.5, requires_grad=True)
        with pyro.plate("plate_outer", 10, 5, dim=-3):
            x = pyro.sample("x", dist.Bernoulli(p))
            with pyro.plate("plate_inner_1", 11, 6):
                y = pyro.sample("y", dist.Bernoulli(p))
                # allocated dim is rightmost available, i.e. -1
                with pyro.plate("plate_inner_2", 12, 7):
                    z = pyro.sample("z", dist.Bernoulli(p))
                    # allocated dim is next rightmost available, i.e. -2
                    # since dim -3 is already allocated, use dim=-4
                    with pyro.plate("plate_inner_3", 13, 8):
                        q = pyro.sample("q", dist.Bernoulli(p))
        assert x.shape == (5, 1, 1)
        assert y.shape == (5, 1, 6)
        assert z.shape == (5, 7, 6)
        assert q.shape == (8, 5, 7, 6)

    return model, model


def vectorized_num_particles():
    data = torch.ones(1000, 2)

    def model():
        with pyro.plate("components", 2):
            p = pyro.sample("p", dist.Beta(torch.tensor(1.1), torch.tensor(1.1)))
            assert p.shape == torch.Size((10, 1, 2))
            with pyro.plate("data", data.shape[0]):
                pyro.sample("obs", dist.Bernoulli(p), obs=data)

    def guide():
        with pyro.plate("components", 2):
            pyro.sample("p", dist.Beta(torch.tensor(1.1), torch.tensor(1.1)))

    return model, guide


def factor_in_model():
    def model():
        pyro.factor("f", torch.tensor(0.0))

    def guide():
        pass

    return model, guide


def factor_in_guide(has_rsample):
    def model():
        pass

    def guide():
        pyro.factor("f", torch.tensor(0.0), has_rsample=has_rsample)

    return model, guide


def mean_field():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        x = pyro.sample("x", dist.Normal(loc, 1.0))
        pyro.sample("y", dist.Normal(x, 1.0))

    return model, guide


def mean_field_mask(mask):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0).mask(mask))
        pyro.sample("y", dist.Normal(x, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        x = pyro.sample("x", dist.Normal(loc, 1.0).mask(mask))
        pyro.sample("y", dist.Normal(x, 1.0))

    return model, guide


def reparam_mask(mask):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with poutine.mask(mask=mask):
            pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(0.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("x", dist.Normal(loc, 1.0))

    return model, guide


def _simplex_data():
    data = torch.tensor([[0.3, -1.2, 0.4], [1.1, 0.2, -0.5]]).exp()  # Pyro: torch.randn(2, 3).exp()
    return data / data.sum(-1, keepdim=True)


def reparam_mask_plate(mask):
    data = _simplex_data()

    def model():
        c = pyro.sample("c", dist.LogNormal(0.0, 1.0).expand([3]).to_event(1))
        with pyro.plate("data", len(data)), poutine.mask(mask=mask):
            pyro.sample("obs", dist.Dirichlet(c), obs=data)

    def guide():
        loc = pyro.param("loc", torch.zeros(3))
        scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
        pyro.sample("c", dist.LogNormal(loc, scale).to_event(1))

    return model, guide


def obs_mask(mask):
    data = torch.tensor([7.0, 7.0, 7.0])

    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("plate", len(data)):
            y = pyro.sample("y", dist.Normal(x, 1.0), obs=data, obs_mask=mask)
            assert ((y == data) == mask).all()

    def guide():
        loc = pyro.param("loc", torch.zeros(()))
        scale = pyro.param("scale", torch.ones(()), constraint=constraints.positive)
        x = pyro.sample("x", dist.Normal(loc, scale))
        with pyro.plate("plate", len(data)):
            with poutine.mask(mask=~mask):
                pyro.sample("y_unobserved", dist.Normal(x, 1.0))

    return model, guide


def obs_mask_multivariate(mask):
    data = torch.full((4, 3), 7.0)

    def model():
        x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(3), torch.eye(3)))
        with pyro.plate("plate", len(data)):
            y = pyro.sample("y", dist.MultivariateNormal(x, torch.eye(3)), obs=data, obs_mask=mask)
            assert ((y == data).all(-1) == mask).all()

    def guide():
        loc = pyro.param("loc", torch.zeros(3))
        cov = pyro.param("cov", torch.eye(3), constraint=constraints.positive_definite)
        x = pyro.sample("x", dist.MultivariateNormal(loc, cov))
        with pyro.plate("plate", len(data)):
            with poutine.mask(mask=~mask):
                pyro.sample("y_unobserved", dist.MultivariateNormal(x, torch.eye(3)))

    return model, guide


def reparam_scale(scale):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with poutine.scale(scale=scale):
            pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(0.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("x", dist.Normal(loc, 1.0))

    return model, guide


def reparam_scale_plate(scale):
    data = _simplex_data()

    def model():
        c = pyro.sample("c", dist.LogNormal(0.0, 1.0).expand([3]).to_event(1))
        with pyro.plate("data", len(data)), poutine.scale(scale=scale):
            pyro.sample("obs", dist.Dirichlet(c), obs=data)

    def guide():
        loc = pyro.param("loc", torch.zeros(3))
        scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
        pyro.sample("c", dist.LogNormal(loc, scale).to_event(1))

    return model, guide


def reparam_stable():
    @poutine.reparam(config={"z": LatentStableReparam()})
    def model():
        stability = pyro.sample("stability", dist.Uniform(0.0, 2.0))
        skew = pyro.sample("skew", dist.Uniform(-1.0, 1.0))
        y = pyro.sample("z", dist.Stable(stability, skew))
        pyro.sample("x", dist.Poisson(y.abs()), obs=torch.tensor(1.0))

    def guide():
        pyro.sample("stability", dist.Delta(torch.tensor(1.5)))
        pyro.sample("skew", dist.Delta(torch.tensor(0.0)))
        pyro.sample("z_uniform", dist.Delta(torch.tensor(0.1)))
        pyro.sample("z_exponential", dist.Delta(torch.tensor(1.0)))

    return model, guide


def ordered_logistic_plate():
    n, k = 5, 4  # data points, categories
    data = torch.tensor([0.0, 3.0, 1.0, 2.0, 1.0])  # Pyro: (K * torch.rand(N)).long().float()

    def model():
        predictor = pyro.sample("predictor", dist.Normal(0.0, 1.0).expand([n]).to_event(1))
        cutpoints = pyro.sample("cutpoints", dist.Normal(0.0, 1.0).expand([k - 1]).to_event(1))
        cutpoints = torch.sort(cutpoints, dim=-1).values
        with pyro.plate("obs_plate", n):
            pyro.sample("obs", dist.OrderedLogistic(predictor, cutpoints), obs=data)

    def guide():
        pred_mu = pyro.param("pred_mu", torch.zeros(n))
        pred_std = pyro.param("pred_std", torch.ones(n))
        cp_mu = pyro.param("cp_mu", torch.zeros(k - 1))
        cp_std = pyro.param("cp_std", torch.ones(k - 1))
        pyro.sample("predictor", dist.Normal(pred_mu, pred_std).to_event(1))
        pyro.sample("cutpoints", dist.Normal(cp_mu, cp_std).to_event(1))

    return model, guide


VECTORIZED = {"vectorize_particles": True}


def case(pyro_test, make, args=(), estimators=SCORE, analytic_kl=False, **elbo_kwargs):
    """One valid pair: Pyro's test name (for the id), its factory and arguments, the estimators."""
    return [
        pytest.param(
            make,
            args,
            estimator,
            {"analytic_kl": analytic_kl, **elbo_kwargs},
            id=f"{pyro_test}{list(args) if args else ''}-{estimator}{'-analytic_kl' if analytic_kl else ''}",
        )
        for estimator in estimators
    ]


T, F = torch.tensor(True), torch.tensor(False)
CASES = [
    *case("nonempty_model_empty_guide", nonempty_model_empty_guide, estimators=BOTH),
    *case("empty_model_empty_guide", empty_model_empty_guide, estimators=BOTH),
    *case("set_has_rsample", set_has_rsample, (False,), estimators=BOTH),
    *case("set_has_rsample", set_has_rsample, (True,), estimators=BOTH),
    *case("not_has_rsample", not_has_rsample, estimators=BOTH),
    *case("iplate", iplate, (None,)),
    *case("iplate", iplate, (2,)),
    *case("plate", plate, (None,)),
    *case("plate", plate, (5,)),
    *case("plate_subsample_param", plate_subsample_param, (5,)),
    *case("plate_subsample_primitive", plate_subsample_primitive, (5,)),
    *case("plate_param_size", plate_param_size, (None, (3, 10))),
    *case("plate_param_size", plate_param_size, (5, (3, 1))),
    *case("plate_no_size", plate_no_size),
    *case("iplate_iplate", iplate_iplate, (None, False), max_plate_nesting=0),
    *case("iplate_iplate", iplate_iplate, (2, False)),
    *case("iplate_iplate_swap", iplate_iplate, (2, True), max_plate_nesting=0),
    *case("iplate_in_model_not_guide", iplate_in_model_not_guide, (5,)),
    *case("plate_iplate", plate_iplate),
    *case("iplate_plate", iplate_plate),
    *case("plate_stack", plate_stack, ((3, 4, 5), False)),
    *case("plate_stack_and_plate", plate_stack, ((3, 4), True)),
    *case("nested_plate_plate", nested_plate_plate),
    *case("plate_reuse", plate_reuse),
    *case("nested_plate_plate_subsample_param", nested_plate_plate_subsample_param),
    *case("nonnested_plate_plate", nonnested_plate_plate),
    *case("three_indep_plate_at_different_depths", three_indep_plate_at_different_depths),
    *case("block_plate_name", block_plate_case, ("name",), estimators=BOTH),
    *case("block_plate_dim", block_plate_case, ("dim",), estimators=BOTH),
    *case("enum_discrete_misuse", enum_discrete_not_configured, max_plate_nesting=0),
    *case("plate_shape_broadcasting", plate_shape_broadcasting, estimators=BOTH),
    *case("dim_allocation", dim_allocation, max_plate_nesting=4),
    *case("vectorized_num_particles", vectorized_num_particles, estimators=BOTH, num_particles=10,
          max_plate_nesting=2, **VECTORIZED),
    *case("factor_in_model", factor_in_model, estimators=BOTH),
    *case("factor_in_guide", factor_in_guide, (False,), estimators=BOTH),
    *case("factor_in_guide", factor_in_guide, (True,), estimators=BOTH),
    *case("mean_field", mean_field, estimators=BOTH, analytic_kl=True),
    *case("mean_field_mask", mean_field_mask, (True,), estimators=BOTH, analytic_kl=True),
    *case("mean_field_mask", mean_field_mask, (False,), estimators=BOTH, analytic_kl=True),
    *case("reparam_mask", reparam_mask, (True,), estimators=BOTH),
    *case("reparam_mask", reparam_mask, (F,), estimators=BOTH),
    *case("reparam_mask", reparam_mask, (False,), estimators=BOTH, analytic_kl=True),
    *case("reparam_mask_plate", reparam_mask_plate, (torch.tensor([False, True]),), estimators=BOTH),
    *case("reparam_mask_plate", reparam_mask_plate, (F,), estimators=BOTH, analytic_kl=True),
    *case("obs_mask", obs_mask, (T,), estimators=BOTH, num_particles=2, **VECTORIZED),
    *case("obs_mask", obs_mask, (torch.tensor([False, True, False]),), estimators=BOTH, **VECTORIZED),
    *case("obs_mask", obs_mask, (torch.tensor([False, True, False]),), estimators=BOTH, analytic_kl=True,
          num_particles=2, **VECTORIZED),
    *case("obs_mask_multivariate", obs_mask_multivariate, (torch.tensor([False, True, True, False]),),
          estimators=BOTH, num_particles=2, **VECTORIZED),
    *case("obs_mask_multivariate", obs_mask_multivariate, (F,), estimators=BOTH, analytic_kl=True,
          **VECTORIZED),
    *case("reparam_scale", reparam_scale, (0.1,), estimators=BOTH),
    *case("reparam_scale", reparam_scale, (torch.tensor(0.5),), estimators=BOTH, analytic_kl=True),
    *case("reparam_scale_plate", reparam_scale_plate, (torch.tensor([0.1, 0.9]),), estimators=BOTH),
    *case("reparam_scale_plate", reparam_scale_plate, (0.1,), estimators=BOTH, analytic_kl=True),
    *case("reparam_stable", reparam_stable, estimators=BOTH),
    *case("ordered_logistic_plate", ordered_logistic_plate, estimators=BOTH),
]


@pytest.mark.parametrize("make,args,estimator,elbo_kwargs", CASES)
def test_valid_ok(make, args, estimator, elbo_kwargs):
    pyro.set_rng_seed(0)
    model, guide = make(*args)
    assert_ok(model, guide, make_elbo(estimator, **elbo_kwargs))


# -------------------------------------------------------- same seed as Pyro's reference ELBO
def reference_elbo(estimator, analytic_kl=False, **kwargs):
    """Pyro's ELBO that this package's ELBO should reproduce sample for sample."""
    if analytic_kl:
        return TraceMeanField_ELBO(**kwargs)
    return TraceGraph_ELBO(**kwargs) if estimator == "score" else Trace_ELBO(**kwargs)


def loss_and_grads_on_seed(elbo, model, guide, seed=1):
    """Loss and gradients of every parameter from one ``loss_and_grads`` call on ``seed``, the
    parameters first created (by a run on another seed) and their gradients cleared."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed + 100)
    with torch.no_grad():
        elbo.loss(model, guide)
    params = dict(pyro.get_param_store().named_parameters())
    for p in params.values():
        p.grad = None
    pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(model, guide)
    grads = {name: torch.zeros_like(p) if p.grad is None else p.grad.clone() for name, p in params.items()}
    return loss, grads


def _has_reference(c):
    make, _, estimator, elbo_kwargs = c.values
    if elbo_kwargs["analytic_kl"] and estimator == "score":
        return False  # Pyro's TraceMeanField_ELBO needs a reparameterized guide
    # Pyro's TraceGraph_ELBO returns all-zero gradients on this pair (its dependency tracking loses
    # the observation's dependence on the guide's sites), so it is no reference for the score function.
    return not (make is ordered_logistic_plate and estimator == "score")


SAME_SEED_CASES = [c for c in CASES if _has_reference(c)]


@pytest.mark.parametrize("make,args,estimator,elbo_kwargs", SAME_SEED_CASES)
def test_matches_pyro_on_same_seed(make, args, estimator, elbo_kwargs):
    model, guide = make(*args)
    if not elbo_kwargs["analytic_kl"]:  # Pyro's ELBO then sees the same estimator at each site (a
        guide = force_estimator(guide, estimator)  # forced site has no KL registered for Pyro's ELBO)
    ours = loss_and_grads_on_seed(make_elbo(estimator, **elbo_kwargs), model, guide)
    theirs = loss_and_grads_on_seed(reference_elbo(estimator, **elbo_kwargs), model, guide)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-5, abs=1e-5)
    assert ours[1].keys() == theirs[1].keys()
    for name in theirs[1]:
        torch.testing.assert_close(
            ours[1][name], theirs[1][name], rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


# ======================================================================== invalid pairs
def test_nonempty_model_empty_guide_error():
    def model():
        pyro.sample("x", dist.Normal(0, 1))

    def guide():
        pass

    # Pyro: "Found vars in model but not guide" (a UserWarning, an error in Pyro's suite)
    for estimator in BOTH:
        assert_error(model, guide, make_elbo(estimator), UserWarning, match="Found vars in model but not guide")


@pytest.mark.parametrize("where", ["model", "guide"])
def test_variable_clash_error(where):
    def model():
        p = torch.tensor(0.5)
        pyro.sample("x", dist.Bernoulli(p))
        if where == "model":
            pyro.sample("x", dist.Bernoulli(p))  # Should error here.

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        pyro.sample("x", dist.Bernoulli(p))
        if where == "guide":
            pyro.sample("x", dist.Bernoulli(p))  # Should error here.

    assert_error(model, guide, ScoreFunctionELBO(), RuntimeError, match="Multiple sample sites named")


@pytest.mark.parametrize("estimator", BOTH)
def test_model_guide_dim_mismatch_error(estimator):
    def model():
        loc = torch.zeros(2)
        scale = torch.ones(2)
        pyro.sample("x", dist.Normal(loc, scale).to_event(1))

    def guide():
        loc = pyro.param("loc", torch.zeros(2, 1, requires_grad=True))
        scale = pyro.param("scale", torch.ones(2, 1, requires_grad=True))
        pyro.sample("x", dist.Normal(loc, scale).to_event(2))

    assert_error(model, guide, make_elbo(estimator), ValueError,
                 match="invalid log_prob shape|Model and guide event_dims disagree")


@pytest.mark.parametrize("estimator", BOTH)
def test_model_guide_shape_mismatch_error(estimator):
    def model():
        loc = torch.zeros(1, 2)
        scale = torch.ones(1, 2)
        pyro.sample("x", dist.Normal(loc, scale).to_event(2))

    def guide():
        loc = pyro.param("loc", torch.zeros(2, 1, requires_grad=True))
        scale = pyro.param("scale", torch.ones(2, 1, requires_grad=True))
        pyro.sample("x", dist.Normal(loc, scale).to_event(2))

    assert_error(model, guide, make_elbo(estimator), ValueError, match="Model and guide shapes disagree")


def test_iplate_variable_clash_error():
    def model():
        p = torch.tensor(0.5)
        for _ in pyro.plate("plate", 2):
            # Each loop iteration should give the sample site a different name.
            pyro.sample("x", dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        for _ in pyro.plate("plate", 2):
            pyro.sample("x", dist.Bernoulli(p))

    assert_error(model, guide, ScoreFunctionELBO(), RuntimeError, match="Multiple sample sites named")


@pytest.mark.parametrize("subsample_size", [None, 5], ids=["full", "subsample"])
@pytest.mark.parametrize("shape", [(5,), (3, 5)])
def test_plate_param_size_mismatch_error(subsample_size, shape):
    model, guide = plate_param_size(subsample_size, shape)
    assert_error(model, guide, ScoreFunctionELBO(), ValueError, match="invalid shape of pyro.param")


@pytest.mark.parametrize("is_validate", [True, False])
def test_iplate_in_guide_not_model_error(is_validate):
    model, guide = iplate_in_guide_not_model(5)
    with pyro.validation_enabled(is_validate):
        if is_validate:
            # Pyro: a UserWarning, an error in Pyro's suite
            assert_error(model, guide, ScoreFunctionELBO(), UserWarning,
                         match="Found plate statements in guide but not model")
        else:
            assert_ok(model, guide, ScoreFunctionELBO())


def test_plate_broadcast_error():
    def model():
        p = torch.tensor(0.5, requires_grad=True)
        with pyro.plate("plate", 10, 5):
            pyro.sample("x", dist.Bernoulli(p).expand_by([2]))

    assert_error(model, model, ScoreFunctionELBO(), ValueError, match="Shape mismatch inside plate")


def _dim_error_model(which):
    def model():
        p = torch.tensor([0.5], requires_grad=True)
        with pyro.plate("plate_outer", 10, 5) as ind_outer:
            if which == 1:
                pyro.sample("x", dist.Bernoulli(p).expand_by([len(ind_outer)]))  # error here
            else:
                pyro.sample("x", dist.Bernoulli(p).expand_by([len(ind_outer), 1]))
            with pyro.plate("plate_inner", 11, 6) as ind_inner:
                if which == 2:
                    pyro.sample("y", dist.Bernoulli(p).expand_by([len(ind_outer)]))  # error here
                else:
                    pyro.sample("y", dist.Bernoulli(p).expand_by([len(ind_inner)]))
                z_shape = {
                    1: [len(ind_outer), len(ind_inner)],
                    2: [len(ind_outer), len(ind_inner)],
                    3: [len(ind_inner), 1],  # error here
                    4: [len(ind_outer), len(ind_outer)],  # error here
                }[which]
                pyro.sample("z", dist.Bernoulli(p).expand_by(z_shape))

    return model


@pytest.mark.parametrize(
    "which,match",
    [
        (1, "invalid log_prob shape"),
        (2, "Shape mismatch inside plate"),
        (3, "invalid log_prob shape|shape mismatch"),
        (4, "hape mismatch inside plate"),
    ],
)
def test_nested_plate_plate_dim_error(which, match):
    model = _dim_error_model(which)
    assert_error(model, model, ScoreFunctionELBO(), ValueError, match=match)


def test_plate_wrong_size_error():
    def model():
        p = torch.tensor(0.5)
        with pyro.plate("plate", 10, 5) as ind:
            pyro.sample("x", dist.Bernoulli(p).expand_by([1 + len(ind)]))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        with pyro.plate("plate", 10, 5) as ind:
            pyro.sample("x", dist.Bernoulli(p).expand_by([1 + len(ind)]))

    assert_error(model, guide, ScoreFunctionELBO(), ValueError, match="Shape mismatch inside plate")


@pytest.mark.parametrize("estimator", BOTH)
def test_block_plate_missing_error(estimator):
    def model():
        with block_plate("plate"):
            pyro.sample("a", dist.Normal(0, 1))

    def guide():
        pyro.sample("a", dist.Normal(0, 1))

    assert_error(model, guide, make_elbo(estimator), ValueError, match="block_plate matched 0 messengers")


@pytest.mark.parametrize("enumerate_", ["sequential", "parallel"])
def test_enum_discrete_misuse_warning(enumerate_):
    # Trace_ELBO and TraceGraph_ELBO warn that a site configured for enumeration is not enumerated.
    def model():
        p = torch.tensor(0.5)
        pyro.sample("x", dist.Bernoulli(p))

    def guide():
        p = pyro.param("p", torch.tensor(0.5, requires_grad=True))
        pyro.sample("x", dist.Bernoulli(p), infer={"enumerate": enumerate_})

    assert_warning(model, guide, ScoreFunctionELBO(max_plate_nesting=0))


def test_dim_allocation_error():
    def model():
        p = torch.tensor(0.5, requires_grad=True)
        with pyro.plate("plate_outer", 10, 5, dim=-2):
            x = pyro.sample("x", dist.Bernoulli(p))
            # allocated dim is rightmost available, i.e. -1
            with pyro.plate("plate_inner_1", 11, 6):
                y = pyro.sample("y", dist.Bernoulli(p))
                # throws an error as dim=-1 is already occupied
                with pyro.plate("plate_inner_2", 12, 7, dim=-1):
                    pyro.sample("z", dist.Bernoulli(p))
        assert x.shape == (5, 1)
        assert y.shape == (5, 6)

    assert_error(model, model, ScoreFunctionELBO(), ValueError, match="collide at dim=")


@pytest.mark.parametrize("estimator", BOTH)
def test_factor_in_guide_error(estimator):
    def model():
        pass

    def guide():
        pyro.factor("f", torch.tensor(0.0))

    assert_error(model, guide, make_elbo(estimator), ValueError, match="missing specification of has_rsample")


@pytest.mark.parametrize("estimator", BOTH)
def test_mean_field_warn(estimator):
    # The guide samples y before x, against the model's order: Pyro's TraceMeanField_ELBO warns
    # that it cannot verify the mean-field restriction (the closed-form KL of y reads an x drawn
    # after y); analytic_kl=True warns too where the sites are reparameterized (their dependencies
    # are not tracked), and raises where the dependency runs through score-function sites (tracked).
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        y = pyro.sample("y", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(y, 1.0))

    if estimator == "score":
        with pytest.raises(ValueError, match=r"site 'y'.*depends on its own sample.*\['x'\]"):
            SVI(model, guide, Adam({"lr": 1e-6}), make_elbo(estimator, analytic_kl=True)).step()
    else:
        assert_warning(model, guide, make_elbo(estimator, analytic_kl=True))


def test_obs_mask_multivariate_error():
    data = torch.full((3, 2), 7.0)
    # This mask is invalid because it includes event shape.
    mask = torch.tensor([[False, False], [False, True], [True, False]])

    def model():
        x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
        with pyro.plate("plate", len(data)):
            pyro.sample("y", dist.MultivariateNormal(x, torch.eye(2)), obs=data, obs_mask=mask)

    def guide():
        loc = pyro.param("loc", torch.zeros(2))
        x = pyro.sample("x", dist.MultivariateNormal(loc, torch.eye(2)))
        with pyro.plate("plate", len(data)):
            with poutine.mask(mask=~mask):
                pyro.sample("y_unobserved", dist.MultivariateNormal(x, torch.eye(2)))

    for estimator in BOTH:
        assert_error(model, guide, make_elbo(estimator), ValueError, match="Invalid obs_mask shape")


def test_pathwise_rejects_bernoulli_guide():
    # Not in Pyro (whose Trace_ELBO falls back to the score function on a Bernoulli site): a pathwise
    # request on a site without rsample is an error naming the site.
    model, guide = plate(5)
    assert_error(model, guide, PathwiseELBO(), ValueError, match="'x'")
