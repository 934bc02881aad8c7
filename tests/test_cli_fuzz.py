"""``ppl-reparam``'s promise for bad input, fuzzed option by option for every subcommand.

For each bad value: exit code 2, exactly one non-empty line on stderr that names the offending option
(or the spec / value), no traceback on either stream, and the ``--out`` folder (pre-filled with a
sentinel file) exactly as it was, names and bytes. Each case runs through ``main(argv)`` in-process
(fast), in a working directory of its own (so that a bad ``--out ''`` taken for ``.`` writes nowhere
else), with tiny sizes so that a case that is wrongly accepted finishes quickly; a handful run through
the installed console script too, for the real exit code and stderr.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from ppl_reparam.cli import main

SENTINEL = b"a file of the user's, which no refused command may touch\n"

BASE = {
    # tiny valid settings, given before each case's options (argparse keeps the last occurrence), so
    # that a bad value the command wrongly accepts starts a run that ends within seconds
    "toy": ["--samples", "10", "--reps", "5", "--estimators", "score"],
    "vae": ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--variance-reps", "0", "--test-particles", "4",
            "--batch-size", "50"],
    "compare": ["--model", "toy", "--estimators", "score", "--reps", "5", "--warmup", "0"],
    "families": ["--samples", "5"],
}
HUGE = "1000000000"


def bad(command: str, *args: str, names: tuple[str, ...] | None = None, every: bool = False, base: bool = True,
        marks: tuple = ()) -> pytest.ParameterSet:
    """A case: ``command`` with ``args``; stderr must name one of ``names`` (all of them with ``every``),
    by default the first option given."""
    if names is None:
        names = (next(a for a in args if a.startswith("--")).split("=")[0],)
    shown = " ".join(repr(a) if not a or " " in a else a for a in (command, *args))
    return pytest.param(command, list(args), names, every, base, id=shown, marks=marks)


def out_cases(command: str) -> list[pytest.ParameterSet]:
    """Bad ``--out`` values: a file, under a file, ``/dev/null``, the empty string, and a place where no one,
    root included, can make a folder (the read-only case that applies to root too)."""
    unwritable = bad(command, "--out", "/proc/ppl-reparam-results",
                     marks=(pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc on this system"),))
    return [*(bad(command, "--out", place) for place in ("{file}", "{file}/results", "/dev/null", "")), unwritable]


def spec_cases(command: str, option: str, specs: list[str]) -> list[pytest.ParameterSet]:
    """Bad estimator specs: the message names the option or the spec."""
    return [bad(command, option, spec, names=(option, spec) if spec.strip(" ,") else (option,)) for spec in specs]


BAD_SPECS = ["", ",", " , ", "scor", "reinforce", "score+rloo+ma", "score+b=nan", "score+b=inf", "score+b=",
             "score+b=x", "score+foo", "score:x", "score:0", "score:-1", "pathwise+rloo", "score+stl", "iwae+akl",
             "iwae:0", "pathwise+anti:3", "score+qmc:4", "pathwise+anti+qmc:4", "pathwise+anti:1", "score+anti:2"]

CASES = [
    # ------------------------------------------------------------------------------------------- toy
    *[bad("toy", "--theta", v) for v in ("abc", "nan", "inf", "1e200", "")],
    bad("toy", "--theta=-inf"),
    bad("toy", "--theta=-1e200"),
    *[bad("toy", "--samples", v) for v in ("ten", "", ",", "0", "-5", "10,x", "10,0", "1.5", HUGE, "10," + HUGE)],
    *[bad("toy", "--reps", v) for v in ("abc", "nan", "inf", "0", "-1", "4", "1e3", HUGE, "")],
    *[bad("toy", "--seed", v) for v in ("-1", "4294967296", "1.5", "", "x")],
    *[bad("toy", "--threads", v) for v in ("0", "-1", "2000", "abc", "")],
    *spec_cases("toy", "--estimators", [*BAD_SPECS, "relaxed+t=0.5", "score+ma", "score+learned", "iwae:1",
                                        "iwae-dreg:5", "score,iwae-vimco"]),
    # rloo needs K >= 2 and the toy sweep's K is N: refused before the sweep starts, naming what clashes
    bad("toy", "--estimators", "score+rloo", "--samples", "1", names=("score+rloo", "--samples", "--estimators")),
    *[bad("toy", "--backend", v) for v in ("jax", "", "PYRO")],
    *out_cases("toy"),
    bad("toy", "--bogus", "1"),
    # ------------------------------------------------------------------------------------------- vae
    *[bad("vae", "--lr", v) for v in ("inf", "nan", "0", "-1", "1e200", "11", "abc", "")],
    bad("vae", "--lr=-inf"),
    *[bad("vae", "--epochs", v) for v in ("100000000", "0", "-1", "1.5", "abc", "")],
    *[bad("vae", "--batch-size", v) for v in ("0", "-1", "10000000", "abc")],
    *[bad("vae", "--latent-dim", v) for v in ("0", "-2", "100000", "nan")],
    *[bad("vae", "--hidden", v) for v in ("0", "a,b", "", ",", "8,-1", "8,0", "1000000", "8;8", "nan")],
    *[bad("vae", "--num-particles", v) for v in ("0", "-1", "10000000", "abc")],
    bad("vae", "--estimator", "score:4", "--num-particles", "2", names=("--num-particles", "score:4")),
    bad("vae", "--objective", "foo"),
    bad("vae", "--objective", "iwae", "--k", "1", names=("--k",)),
    bad("vae", "--objective", "iwae", "--k", "100000", names=("--k",)),
    bad("vae", "--k", "3", names=("--k",)),
    bad("vae", "--objective", "iwae", "--estimator", "foo", names=("--objective", "foo")),
    bad("vae", "--objective", "iwae", "--num-particles", "2", names=("--num-particles",)),
    bad("vae", "--objective", "iwae", "--analytic-kl", names=("--analytic-kl",)),
    bad("vae", "--analytic-kl", "--estimator", "iwae"),
    bad("vae", "--analytic-kl", "--model", "discrete", "--estimator", "relaxed+t=0.5"),
    *[bad("vae", "--seed", v) for v in ("-1", "4294967296", "1e3")],
    *[bad("vae", "--variance-reps", v) for v in ("-1", "3", "10000000")],
    *[bad("vae", "--variance-every", v) for v in ("0", "-5")],
    *[bad("vae", "--test-particles", v) for v in ("1", "0", "1000000")],
    bad("vae", "--threads", "0"),
    *[bad("vae", "--model", v) for v in ("foo", "", "Gaussian")],
    *[bad("vae", "--backend", v) for v in ("jax", "")],
    bad("vae", "--resume", "--overwrite", names=("--resume", "--overwrite"), every=True),
    bad("vae", "--resume"),  # an empty folder holds no checkpoint to continue
    *spec_cases("vae", "--estimator", [*BAD_SPECS, "relaxed+t=0.5", "iwae:1"]),
    bad("vae", "--estimator", "score,pathwise", names=("--estimator", "--compare")),
    bad("vae", "--compare", "--estimator", "score,score", names=("--estimator", "score")),
    # rloo with one particle and the IWAE with one sample are not estimators: refused naming the spec
    bad("vae", "--estimator", "score+rloo", names=("--estimator", "score+rloo")),
    *spec_cases("vae", "--estimator", ["relaxed+t=0", "relaxed+t=-1", "relaxed+t=nan", "relaxed+t=inf", "relaxed",
                                       "relaxed+t=", "relaxed+t=0.5+akl", "relaxed+t=0.5:0"]),
    # the discrete VAE's latent bits have no reparameterized sampler
    bad("vae", "--model", "discrete", "--estimator", "pathwise", names=("--estimator", "pathwise")),
    bad("vae", "--measure-on", "score"),
    bad("vae", "--compare", "--estimator", "score,pathwise", "--measure-on", "scor",
        names=("--measure-on", "scor")),
    bad("vae", "--data", "", names=("--data",)),
    bad("vae", "--data", "{missing}", names=("{missing}",)),
    bad("vae", "--data", "{file}", names=("{file}",)),
    *out_cases("vae"),
    # -------------------------------------------------------------------------------------- compare
    bad("compare", "--estimators", "score", "--out", "{out}", names=("--model",), base=False),
    *[bad("compare", "--model", v) for v in ("foo", "", "gaussian")],
    bad("compare", "--model", "toy", "--checkpoint", "x", names=("--checkpoint",)),
    bad("compare", "--model", "toy", "--run", "score", names=("--run",)),
    bad("compare", "--model", "vae", "--run", "score", names=("--run",)),
    bad("compare", "--model", "vae", "--checkpoint", "{missing}", names=("--checkpoint",)),
    bad("compare", "--model", "vae", "--checkpoint", "{file}", names=("{file}",)),
    *[bad("compare", "--reps", v) for v in ("4", "0", "nan", HUGE, "abc")],
    *[bad("compare", "--theta", v) for v in ("inf", "nan", "1e200")],
    bad("compare", "--theta=-inf"),
    bad("compare", "--seed", "-1"),
    *[bad("compare", "--threads", v) for v in ("0", "2000")],
    *[bad("compare", "--batch-size", v) for v in ("0", "-1")],
    *[bad("compare", "--warmup", v) for v in ("-1", "1e9", "100000000")],
    *spec_cases("compare", "--estimators", [*BAD_SPECS, "relaxed+t=0.5", "score,score"]),
    bad("compare", "--estimators", "iwae:1", names=("--estimators", "iwae:1")),
    bad("compare", "--estimators", "score+rloo", names=("--estimators", "score+rloo")),
    bad("compare", "--model", "discrete", "--estimators", "relaxed+t=0", names=("--estimators", "relaxed+t=0")),
    bad("compare", "--model", "discrete", "--estimators", "pathwise", names=("--estimators", "pathwise")),
    *[bad("compare", "--backend", v) for v in ("jax", "")],
    bad("compare", "--estimators", "pathwise+qmc", names=("--estimators", "pathwise+qmc")),
    *[bad("compare", "--choose", v) for v in ("encoder", "decoder", "foo", "")],
    bad("compare", "--model", "vae", "--choose", "theta", names=("--choose",)),
    *[bad("compare", "--criterion", v) for v in ("seconds", "")],
    *out_cases("compare"),
    # ------------------------------------------------------------------------------------- families
    *[bad("families", "--samples", v) for v in (HUGE, "0", "4", "-1", "abc", "", "nan", "1e5")],
    *[bad("families", "--seed", v) for v in ("-1", "4294967296", "x")],
    *[bad("families", "--backend", v) for v in ("jax", "")],
    bad("families", "--threads", "0"),
    bad("families", "--estimators", "score"),  # families takes no estimators
    *out_cases("families"),
]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones too): relative name to bytes (None for a folder)."""
    entries: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            entries[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            entries[os.path.relpath(path, folder)] = Path(path).read_bytes()
    return entries


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A sentinel-filled ``--out`` folder, a file, a missing path, and an own working directory (with
    a sentinel too) that the case runs in."""
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    for folder in (out, cwd):
        folder.mkdir()
        (folder / "sentinel.txt").write_bytes(SENTINEL)
    (tmp_path / "afile").write_bytes(SENTINEL)
    monkeypatch.chdir(cwd)
    return {"out": out, "cwd": cwd, "file": tmp_path / "afile", "missing": tmp_path / "missing"}


def fill(text: str, places: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in places.items()}) if "{" in text else text


def check_refusal(code: object, out: str, err: str, names: tuple[str, ...], every: bool) -> None:
    """Exit code 2, one non-empty line on stderr (``ppl-reparam[ COMMAND]: error: ...``) naming the option,
    no traceback."""
    assert "Traceback" not in err and "Traceback" not in out, err
    assert code == 2, f"exit code {code!r}, stderr {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip() and err.endswith("\n") and "\r" not in err, \
        f"stderr is not one line: {err!r}"
    assert lines[0].startswith("ppl-reparam") and ": error: " in lines[0], err
    found = [name for name in names if name in lines[0]]
    assert (len(found) == len(names)) if every else found, f"stderr names none of {names}: {err!r}"


@pytest.mark.parametrize("command, args, names, every, base", CASES)
def test_bad_value_refused(command, args, names, every, base, places, capsys):
    args = [fill(a, places) for a in args]
    names = tuple(fill(n, places) for n in names)
    argv = [command, *(BASE[command] if base else ()), *args]
    if "--out" not in args:
        argv += ["--out", str(places["out"])]
    before = {k: snapshot(places[k]) for k in ("out", "cwd")}
    try:
        code: object = main(argv)
    except BaseException as e:  # noqa: BLE001  (what escaped main is part of the verdict)
        code = f"{type(e).__name__} escaped main: {e}"
    captured = capsys.readouterr()
    check_refusal(code, captured.out, captured.err, names, every)
    for k in ("out", "cwd"):
        assert snapshot(places[k]) == before[k], f"{k} folder changed by {argv}"
    assert places["file"].read_bytes() == SENTINEL
    assert not places["missing"].exists()


@pytest.mark.parametrize("command", ["toy", "vae", "compare", "families"])
@pytest.mark.parametrize("inside", [False, True], ids=["read-only out", "under read-only"])
def test_read_only_out_refused(command, inside, places, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not stop root from writing, so no folder is read-only")
    folder = places["out"]
    target = folder / "results" if inside else folder
    folder.chmod(0o555)
    try:
        before = snapshot(folder)
        code = main([command, *BASE[command], "--out", str(target)])
        captured = capsys.readouterr()
        check_refusal(code, captured.out, captured.err, ("--out",), False)
        assert snapshot(folder) == before
    finally:
        folder.chmod(0o755)


def test_no_command_or_unknown_command(capsys):
    for argv in ([], ["bogus"], ["--bogus"]):
        code = main(argv)
        captured = capsys.readouterr()
        check_refusal(code, captured.out, captured.err, ("COMMAND", "bogus"), False)


# -------------------------------------------------------------------- through the installed script
SCRIPT = Path(sys.executable).parent / "ppl-reparam"
needs_script = pytest.mark.skipif(not SCRIPT.exists(), reason=f"no console script at {SCRIPT} (not installed)")


def limit_memory() -> None:
    """In the child: at most 4 GiB of address space, so that a command that starts a huge allocation
    instead of refusing it fails fast there rather than swamping the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


SCRIPT_CASES = [
    bad("toy", "--theta", "nan"),
    bad("toy", "--out", "{file}"),
    bad("vae", "--lr", "inf"),
    bad("vae", "--resume", "--overwrite", names=("--resume", "--overwrite"), every=True),
    bad("compare", "--model", "toy", "--checkpoint", "x", names=("--checkpoint",)),
    bad("families", "--samples", HUGE),
    # a particle count no machine can hold: refused before any work, like `toy --samples 1000000000`
    bad("compare", "--estimators", f"score:{HUGE}", names=("--estimators", f"score:{HUGE}")),
    bad("vae", "--estimator", f"score:{HUGE}", names=("--estimator", f"score:{HUGE}")),
]


@needs_script
@pytest.mark.parametrize("command, args, names, every, base", SCRIPT_CASES)
def test_console_script_refuses(command, args, names, every, base, places):
    args = [fill(a, places) for a in args]
    argv = [str(SCRIPT), command, *(BASE[command] if base else ()), *args]
    if "--out" not in args:
        argv += ["--out", str(places["out"])]
    before = snapshot(places["out"])
    result = subprocess.run(argv, capture_output=True, text=True, cwd=places["cwd"], timeout=120,
                            preexec_fn=limit_memory, env={**os.environ, "PYTHONWARNINGS": "default"})
    check_refusal(result.returncode, result.stdout, result.stderr, names, every)
    assert snapshot(places["out"]) == before
    assert places["file"].read_bytes() == SENTINEL
