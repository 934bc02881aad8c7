"""Each backend imports and runs without the other framework installed (simulated by an import hook
that refuses it), and the shared core imports neither."""

import subprocess
import sys

import pytest

from ppl_reparam import BACKEND_API

HOOK = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked for this test")
sys.meta_path.insert(0, Refuse())
"""

PYRO_WITHOUT_JAX = """
import pyro, torch
from ppl_reparam.pyro import ScoreFunctionELBO
from ppl_reparam.models.toy_gaussian import ToyGaussian
toy = ToyGaussian(2.0)
print(ScoreFunctionELBO(num_particles=4).loss(toy.model, toy.guide))
"""

CORE_WITHOUT_EITHER = """
import ppl_reparam.analytic, ppl_reparam.stats, ppl_reparam.report, ppl_reparam.plots, ppl_reparam.data
import ppl_reparam.specs, ppl_reparam.cli.toy, ppl_reparam.cli, ppl_reparam.cli.vae, ppl_reparam.cli.compare
import ppl_reparam.surrogate, ppl_reparam.iwae, ppl_reparam.meanfield, ppl_reparam.families, ppl_reparam.training
import ppl_reparam.forcing, ppl_reparam.study, ppl_reparam.models
print(ppl_reparam.analytic.gradient_moments("score", 2.0).variance)
"""


@pytest.mark.parametrize(
    "blocked, code",
    [
        ({"jax", "jaxlib", "numpyro"}, PYRO_WITHOUT_JAX),
        ({"jax", "jaxlib", "numpyro", "torch", "pyro"}, CORE_WITHOUT_EITHER),
    ],
)
def test_import_without(blocked, code):
    result = subprocess.run([sys.executable, "-c", HOOK.format(blocked=sorted(blocked)) + code],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_both_backends_export_the_same_names():
    import ppl_reparam
    import ppl_reparam.numpyro as numpyro_backend
    import ppl_reparam.pyro as pyro_backend

    # AmortizedNormal wraps a torch module, the Jit classes compile with pyro.ops.jit (NumPyro's run under
    # jax.jit as they are); everything else has a NumPyro twin of the same name.
    pyro_only = {"AmortizedNormal", "JitPathwiseELBO", "JitScoreFunctionELBO"}
    # NumPyro chooses "auto" sites' estimators before training (its loss runs under jit); Pyro's ELBOs
    # choose during it
    numpyro_only = {"ResolvedGuide", "choose_site_estimators"}
    assert set(pyro_backend.__all__) - pyro_only == set(numpyro_backend.__all__) - numpyro_only == set(BACKEND_API)
    for backend in (pyro_backend, numpyro_backend):
        assert all(hasattr(backend, name) for name in backend.__all__)
    assert ppl_reparam.__version__ == "0.1.0"
