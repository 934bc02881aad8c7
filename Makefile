# `make demo` and `make test` each set up .venv on a fresh machine, then run.
# torch==2.13.0 is installed first and on its own: that spec resolves to the CPU wheel on disk;
# any looser spec can pull several GB of CUDA packages from the registry.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ppl-reparam toy --out results

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/toy_sweep.py

clean:
	rm -rf $(VENV) results
