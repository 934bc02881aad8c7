import logging

import pytest

logging.getLogger("pyro").setLevel(logging.WARNING)

try:  # one torch thread: on a busy 2-core machine a thread pool makes small ops far slower
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Each test starts with an empty Pyro param store (when Pyro is installed)."""
    try:
        import pyro
    except ImportError:
        yield
        return
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def quick_compiles():
    """Compile JAX programs without XLA's optimisation passes for a module: they take most of the
    NumPyro tests' time on CPU and change no number a test checks; restored after."""
    import jax

    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
