"""``ppl-reparam`` end to end on small settings, and its argument errors."""

import csv
import json
import subprocess
import sys

import pytest

from ppl_reparam.cli import main


def test_toy_end_to_end(tmp_path, capsys):
    out = tmp_path / "toy"
    code = main(["toy", "--samples", "10,100", "--reps", "20", "--estimators", "score+akl,pathwise,pathwise+stl",
                 "--seed", "3", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| N | estimator | mean | variance | 95% CI | closed form |" in printed
    rows = list(csv.DictReader(open(out / "toy.csv")))
    assert [(r["estimator"], r["N"]) for r in rows] == [
        ("score+akl", "10"), ("score+akl", "100"), ("pathwise", "10"), ("pathwise", "100"),
        ("pathwise+stl", "10"), ("pathwise+stl", "100")]
    assert [float(r["closed_form_per_sample_variance"]) for r in rows[::2]] == pytest.approx([87.0, 4.0, 1.0])
    saved = json.loads((out / "toy.json").read_text())
    assert saved["seed"] == 3 and len(saved["rows"]) == 6
    assert (out / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # same seed, same numbers
    main(["toy", "--samples", "10,100", "--reps", "20", "--estimators", "score+akl,pathwise,pathwise+stl",
          "--seed", "3", "--out", str(tmp_path / "again"), "--quiet"])
    again = list(csv.DictReader(open(tmp_path / "again" / "toy.csv")))
    assert [r["mean"] for r in again] == [r["mean"] for r in rows]


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_toy_measure_valued_rows_carry_their_closed_forms(backend, tmp_path, capsys):
    assert main(["toy", "--backend", backend, "--samples", "10", "--reps", "10", "--estimators",
                 "measure+akl,measure+akl+indep", "--out", str(tmp_path), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "toy.csv")))
    assert [float(r["closed_form_per_sample_variance"]) for r in rows] == pytest.approx([4.3718, 3.4592], abs=1e-4)


def test_toy_both_backends(tmp_path, capsys):
    assert main(["toy", "--backend", "both", "--samples", "10", "--reps", "10", "--out", str(tmp_path), "--quiet"]) == 0
    assert "| backend | N |" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "toy.csv")))
    assert sorted({r["backend"] for r in rows}) == ["numpyro", "pyro"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["toy", "--samples", "ten"], "--samples must be comma-separated integers"),
        (["toy", "--samples", "0,10"], "--samples must be positive"),
        (["toy", "--estimators", "score,reinforce"], "unknown base 'reinforce'"),
        (["toy", "--estimators", "iwae-dreg:5"], "compare IWAE with `ppl-reparam compare --model toy`"),
        (["toy", "--reps", "3"], "argument --reps: must be an integer in [5, 1000000]"),
    ],
)
def test_toy_bad_arguments(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_usage_errors_from_argparse(capsys):
    assert main(["toy", "--theta", "abc"]) == 2
    assert "argument --theta: expected a number" in capsys.readouterr().err
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "ppl_reparam.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "toy" in result.stdout


HEAVY = ("torch", "jax", "pyro", "numpyro", "matplotlib")


@pytest.mark.parametrize("args", [["--help"], ["toy", "--help"], ["vae", "--help"], ["compare", "--help"],
                                  ["families", "--help"]])
def test_help_does_not_import_torch_or_jax(args):
    """In a fresh interpreter: building the parser and printing help loads none of the heavy
    frameworks (each subcommand imports them inside its run)."""
    code = (
        "import sys\n"
        "from ppl_reparam.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"
    assert "usage: ppl-reparam" in result.stdout


@pytest.mark.parametrize("message", ["[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: "
                                     "you tried to allocate 4000000000000 bytes", "CUDA out of memory.\nTried ..."])
def test_out_of_memory_is_one_line_and_exit_1(message, monkeypatch, tmp_path, capsys):
    from ppl_reparam.cli import toy

    def exhausted(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(toy, "sweep", exhausted)
    assert main(["toy", "--samples", "10", "--reps", "5", "--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ppl-reparam toy: error: out of memory (") and err.count("\n") == 1, err
    assert "fewer particles" in err and not any(tmp_path.iterdir())


def test_other_runtime_errors_are_not_taken_for_out_of_memory(monkeypatch, tmp_path):
    from ppl_reparam.cli import toy

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(toy, "sweep", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["toy", "--samples", "10", "--reps", "5", "--out", str(tmp_path), "--quiet"])


def test_pyro_trace_shapes_are_left_out_of_the_one_line_error():
    from ppl_reparam.cli import one_line

    try:
        try:
            raise ValueError("site 'z': no rsample")
        except ValueError as e:
            raise ValueError(f"{e}\n   Trace Shapes:\n    Param Sites:") from e
    except ValueError as outer:
        assert one_line(outer) == "site 'z': no rsample"
    assert one_line(ValueError("two\nlines")) == "two lines"
