"""Time what users run: public entry points, default settings, fresh objects, fresh processes.

Every measurement runs in a new Python process (nothing imported or compiled before it), with the
library's defaults (no thread setting of our own: ``gradient_variance`` and the commands apply the
thread policy of :mod:`ppl_reparam.threads`), and a fresh ELBO object for every call, as a notebook
or a script would. Reference: the plain NumPy loop of the classic notebook (benchmarks/reference.py).

1. ``ppl-reparam toy`` with the README's arguments, the whole command's wall time, against a process
   that imports NumPy and runs the NumPy loop (Python start and imports included in both); target <= 5x.
   For scale, a process that only imports torch (the least any torch-based command pays).
2. The toy sweep (N in 10..100000, 100 repetitions, both estimators) through each backend's
   ``gradient_variance``: "cold" is the first sweep of the process (first calls, compilation), "warm"
   the second (fresh ELBOs again); the NumPy loop is timed in the same process; target warm <= 1.5x.
3. NumPyro: ``gradient_variance`` with ``ScoreFunctionELBO(num_particles=10)`` on the toy: the first
   call compiles; then 20 calls with a fresh equal ELBO each, alternating with 20 calls of the first
   object (warm), medians: the fresh ones must reuse the compiled code (target <= 1.2x warm).

Each process is run ``--runs`` times, alternating, and the medians are printed. Run:

    .venv/bin/python benchmarks/as_users_run.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = "10,100,1000,10000,100000"
PYTHON = sys.executable

NUMPY_PROCESS = f"""
import sys; sys.path.insert(0, {str(HERE)!r})
from reference import numpy_loop
numpy_loop([{SAMPLES}], 100)
"""

SWEEP = """
import json, sys, time
sys.path.insert(0, {here!r})
from reference import THETA, numpy_loop
samples = [{samples}]
{setup}
def sweep():
    began = time.perf_counter()
    for n in samples:
        for cls in (ScoreFunctionELBO, PathwiseELBO):
            measure(cls, n)
    return time.perf_counter() - began
cold, warm = sweep(), sweep()
numpy_loop(samples, 100)
began = time.perf_counter(); numpy_loop(samples, 100); ref = time.perf_counter() - began
print(json.dumps({{"cold": cold, "warm": warm, "numpy": ref}}))
"""

PYRO_SETUP = """
import pyro
from ppl_reparam.models.toy_gaussian import ToyGaussian
from ppl_reparam.pyro import PathwiseELBO, ScoreFunctionELBO, gradient_variance
toy = ToyGaussian(THETA)
def measure(cls, n):
    elbo = cls(num_particles=n, vectorize_particles=True, max_plate_nesting=0, analytic_kl=True)
    gradient_variance(elbo, toy.model, toy.guide, num_reps=100, seed=0)
"""

NUMPYRO_SETUP = """
from ppl_reparam.models.toy_gaussian_numpyro import ToyGaussian
from ppl_reparam.numpyro import PathwiseELBO, ScoreFunctionELBO, gradient_variance
toy = ToyGaussian(THETA)
def measure(cls, n):
    gradient_variance(cls(num_particles=n, analytic_kl=True), toy.model, toy.guide, num_reps=100, seed=0)
"""

FRESH_ELBO = """
import json, statistics, time
from ppl_reparam.models.toy_gaussian_numpyro import ToyGaussian
from ppl_reparam.numpyro import ScoreFunctionELBO, gradient_variance
toy = ToyGaussian(2.0)
def timed(elbo, seed):
    began = time.perf_counter()
    gradient_variance(elbo, toy.model, toy.guide, num_reps=100, seed=seed)
    return time.perf_counter() - began
warm = ScoreFunctionELBO(num_particles=10)
first = timed(warm, 0)
fresh, again = [], []
for i in range(1, 21):  # alternating, so that neither side gets the process's later warm-up alone
    fresh.append(timed(ScoreFunctionELBO(num_particles=10), i))
    again.append(timed(warm, i))
print(json.dumps({"first": first, "fresh equal": statistics.median(fresh), "warm": statistics.median(again)}))
"""


def wall(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - began


def child(code: str) -> dict[str, float]:
    result = subprocess.run([PYTHON, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cli = str(Path(PYTHON).with_name("ppl-reparam"))
    results: dict[str, list] = {
        k: [] for k in ("numpy process", "torch import", "toy command", "pyro", "numpyro", "fresh")
    }
    with tempfile.TemporaryDirectory() as out:
        toy = [cli, "toy", "--theta", "2", "--samples", SAMPLES, "--reps", "100", "--out", out, "--quiet"]
        for _ in range(args.runs):
            results["numpy process"].append(wall([PYTHON, "-c", NUMPY_PROCESS]))
            results["torch import"].append(wall([PYTHON, "-c", "import torch"]))
            results["toy command"].append(wall(toy))
            results["pyro"].append(child(SWEEP.format(here=str(HERE), samples=SAMPLES, setup=PYRO_SETUP)))
            results["numpyro"].append(child(SWEEP.format(here=str(HERE), samples=SAMPLES, setup=NUMPYRO_SETUP)))
            results["fresh"].append(child(FRESH_ELBO))

    def med(rows: list, key: str | None = None) -> float:
        return statistics.median(r if key is None else r[key] for r in rows)

    print(f"as users run it: fresh processes, default settings, fresh ELBOs; medians of {args.runs} runs")
    numpy_process, toy_command = med(results["numpy process"]), med(results["toy command"])
    print(f"  ppl-reparam toy (README arguments), whole command   {toy_command:7.2f} s")
    print(f"  NumPy loop process (start, import, loop)            {numpy_process:7.2f} s")
    print(f"  ratio: {toy_command / numpy_process:.2f} (target <= 5)")
    torch_import = med(results["torch import"])
    print(f"  a process that only imports torch                   {torch_import:7.2f} s "
          f"= {torch_import / numpy_process:.2f} x the NumPy loop process")
    for backend in ("pyro", "numpyro"):
        cold, warm, ref = (med(results[backend], k) for k in ("cold", "warm", "numpy"))
        print(f"  toy sweep through {backend}'s gradient_variance: cold {cold:.2f} s, warm {warm:.2f} s; NumPy "
              f"loop {ref:.3f} s; warm ratio {warm / ref:.2f} (target <= 1.5), cold ratio {cold / ref:.1f}")
    first, fresh, warm = (med(results["fresh"], k) for k in ("first", "fresh equal", "warm"))
    print(f"  NumPyro gradient_variance, ScoreFunctionELBO(num_particles=10), 100 reps: first {first:.2f} s, "
          f"a fresh equal ELBO {1e3 * fresh:.2f} ms, warm {1e3 * warm:.2f} ms (medians of 20, alternating); "
          f"ratio fresh / warm {fresh / warm:.2f} "
          "(target <= 1.2)")


if __name__ == "__main__":
    main()
