# `make demo` and `make test` each set up .venv on a fresh machine, then run.
# torch==2.13.0 is installed first and on its own: that spec resolves to the CPU wheel on disk;
# any looser spec can pull several GB of CUDA packages from the registry.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ppl-reparam toy --backend both --out results
	$(VENV)/bin/ppl-reparam vae --compare --epochs 100 --variance-every 10 --out results/vae
	$(VENV)/bin/ppl-reparam vae --model discrete --compare --epochs 100 --lr 3e-3 --variance-reps 50 \
		--variance-every 50 --test-particles 20 --measure-on score+rloo:4 --out results/discrete \
		--estimator score,score+rloo:4,score+ma,score+learned,score+b=25,iwae-vimco:4,relaxed+t=0.5,relaxed+t=1
	$(VENV)/bin/ppl-reparam compare --model toy --out results/compare-toy
	$(VENV)/bin/ppl-reparam compare --model vae --out results/compare-vae
	$(VENV)/bin/ppl-reparam compare --model discrete --checkpoint results/discrete --run score+rloo:4 \
		--out results/compare-discrete

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/as_users_run.py
	$(PY) benchmarks/toy_sweep.py
	$(PY) benchmarks/toy_sweep_numpyro.py
	$(PY) benchmarks/vae_step.py
	$(PY) benchmarks/score_step.py
	$(PY) benchmarks/jit_step.py
	$(PY) benchmarks/vae_epoch_numpyro.py
	$(PY) benchmarks/storchastic_side_by_side.py

clean:
	rm -rf $(VENV) results
