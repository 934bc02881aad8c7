import logging

import pytest

logging.getLogger("pyro").setLevel(logging.WARNING)


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
