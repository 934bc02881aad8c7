"""Data safety of ``ppl-reparam``'s runs, end to end on tiny settings, for both ``vae`` backends.

A ``vae`` run refuses an ``--out`` that holds a run unless ``--resume`` or ``--overwrite``; ``--resume``
refuses a damaged or foreign checkpoint (Pyro ``checkpoint.pt``, NumPyro ``checkpoint.npz``, both behind
a SHA-256 digest) with one line naming the file and what to do; results are written as one set
(``report.ResultSet``: staged, moved into place, ``manifest.json`` last), so an interrupted write leaves
the previous set, a new set removes the previous set's files it lacks, and stale temporaries of
interrupted atomic writes are removed by the next run; progress lines go to stderr when it is not a
terminal, unless ``--quiet``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppl_reparam.cli import main

TINY = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--variance-reps", "0", "--test-particles", "4",
        "--quiet"]
BACKENDS = ("pyro", "numpyro")
CHECKPOINT = {"pyro": "checkpoint.pt", "numpyro": "checkpoint.npz"}
RESULTS = {"history.csv", "results.json", "elbo.png", "images.png"}
"""A ``vae`` run's result set without variance measurements."""
MEASURED = {"variance.csv", "variance.png", "summary.png"}
"""What a run with ``--variance-reps`` adds to the set."""
NOTES = b"the user's own notes, in the run's folder but no part of its results\n"


def vae(out: Path, backend: str, *extra: str) -> int:
    return main(["vae", *TINY, "--backend", backend, "--out", str(out), *extra])


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


def one_line_error(capsys: pytest.CaptureFixture, command: str = "vae") -> str:
    """The one line on stderr, ``ppl-reparam COMMAND: error: ...``, with no traceback anywhere."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ppl-reparam {command}: error: "), captured.err
    return lines[0]


def check_manifest(folder: Path, command: str, files: set[str]) -> None:
    """``manifest.json`` lists exactly ``files``, each with its SHA-256, and the set is in place."""
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["command"] == command
    assert set(manifest["files"]) == files
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert not (folder / ".partial").exists()
    assert not list(folder.glob(".*.tmp"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, quick_compiles):
    """``finished(backend)``: the folder of a finished tiny run (with the user's notes beside it), made
    once per module; tests that change it work on a copy (:func:`run_copy`)."""
    made: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in made:
            folder = tmp_path_factory.mktemp(f"finished-{backend}") / "run"
            folder.mkdir()
            (folder / "notes.txt").write_bytes(NOTES)
            assert vae(folder, backend) == 0
            made[backend] = folder
        return made[backend]

    return get


@pytest.fixture
def run_copy(finished, tmp_path):
    """``run_copy(backend)``: a fresh copy of the finished run's folder."""

    def copy(backend: str) -> Path:
        return Path(shutil.copytree(finished(backend), tmp_path / backend))

    return copy


# ---------------------------------------------------------------------------------------- the set
@pytest.mark.parametrize("backend", BACKENDS)
def test_manifest_lists_exactly_the_results(backend, finished):
    folder = finished(backend)
    check_manifest(folder, "vae", RESULTS)
    assert {p.name for p in folder.iterdir()} == RESULTS | {"manifest.json", CHECKPOINT[backend], "notes.txt"}
    assert (folder / "notes.txt").read_bytes() == NOTES


@pytest.mark.parametrize("backend", BACKENDS)
def test_rerun_without_flags_refused(backend, run_copy, capsys):
    folder = run_copy(backend)
    before = snapshot(folder)
    capsys.readouterr()
    assert vae(folder, backend) == 2
    line = one_line_error(capsys)
    assert str(folder) in line and "--resume" in line and "--overwrite" in line
    assert snapshot(folder) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_of_the_other_backend_refused(backend, run_copy, capsys):
    """A folder that holds a run of either backend holds a run: a ``vae`` of the other backend started
    there without ``--resume``/``--overwrite`` would replace its results and strand its checkpoint."""
    folder = run_copy(backend)
    other = next(b for b in BACKENDS if b != backend)
    before = snapshot(folder)
    capsys.readouterr()
    assert vae(folder, other) == 2
    line = one_line_error(capsys)
    assert str(folder) in line and "--overwrite" in line
    assert snapshot(folder) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_overwrite_starts_over_and_drops_the_old_set(backend, run_copy):
    folder = run_copy(backend)
    # starting over with other settings (a resume would refuse them), and a bigger set: the measurements
    assert vae(folder, backend, "--overwrite", "--seed", "1", "--variance-reps", "5") == 0
    check_manifest(folder, "vae", RESULTS | MEASURED)
    assert json.loads((folder / "results.json").read_text())["config"]["seed"] == 1
    # starting over again with a smaller set: the previous set's files the new one lacks are gone
    assert vae(folder, backend, "--overwrite") == 0
    check_manifest(folder, "vae", RESULTS)
    assert json.loads((folder / "results.json").read_text())["config"]["seed"] == 0
    assert {p.name for p in folder.iterdir()} == RESULTS | {"manifest.json", CHECKPOINT[backend], "notes.txt"}
    assert (folder / "notes.txt").read_bytes() == NOTES


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


def _other_runs(path: Path, backend: str, runs: str) -> None:
    """Rewrite the checkpoint at ``path`` (digest and all, so that it reads) with its runs renamed or
    removed: a checkpoint whose runs are not the ones these settings train."""

    def change(listed: list) -> list:
        return [] if runs == "none" else [{**r, "name": "score+rloo:4"} for r in listed]

    if backend == "pyro":
        from ppl_reparam.pyro.training import load_checkpoint, save_checkpoint

        state = load_checkpoint(path)
        save_checkpoint({**state, "runs": change(state["runs"])}, path)
    else:
        from ppl_reparam.numpyro.training import load_checkpoint, save_checkpoint

        meta, arrays = load_checkpoint(path)
        save_checkpoint({**meta, "runs": change(meta["runs"])}, {} if runs == "none" else arrays, path)


DAMAGE = ["flipped", "truncated", "empty", "random", "other backend's", "runs renamed", "runs missing"]


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_refuses_a_bad_checkpoint(backend, damage, run_copy, finished, capsys):
    folder = run_copy(backend)
    path = folder / CHECKPOINT[backend]
    data = path.read_bytes()
    if damage == "flipped":
        path.write_bytes(_flip(data))
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "random":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    elif damage == "other backend's":
        other = next(b for b in BACKENDS if b != backend)
        path.write_bytes((finished(other) / CHECKPOINT[other]).read_bytes())
    else:
        _other_runs(path, backend, "none" if damage == "runs missing" else "renamed")
    before = snapshot(folder)
    capsys.readouterr()
    assert vae(folder, backend, "--resume") == 2
    line = one_line_error(capsys)
    assert str(path) in line, "the message names the checkpoint"
    assert "--overwrite" in line, "the message says what to do"
    assert snapshot(folder) == before


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_next_run_removes_stale_temporaries(backend, flag, run_copy):
    folder = run_copy(backend)
    stale = [folder / f".{CHECKPOINT[backend]}.abc.tmp", folder / ".history.csv.k2j4.tmp"]
    for p in stale:
        p.write_bytes(b"half a file, left by a write that was killed")
    assert vae(folder, backend, flag) == 0
    assert not any(p.exists() for p in stale)
    check_manifest(folder, "vae", RESULTS)
    assert (folder / "notes.txt").read_bytes() == NOTES


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_results_leave_the_previous_set(backend, error, run_copy, monkeypatch, capsys):
    import ppl_reparam.plots

    folder = run_copy(backend)
    before = snapshot(folder)

    def broken(*args, **kwargs):
        raise error("interrupted while the results were being written")

    # the last figure of the set: the others are staged by then; --resume at the last epoch trains
    # nothing and writes no checkpoint, so only the result set is written
    monkeypatch.setattr(ppl_reparam.plots, "plot_image_grid", broken)
    if error is KeyboardInterrupt:
        assert vae(folder, backend, "--resume") == 130
        assert "interrupted" in capsys.readouterr().err
    else:
        with pytest.raises(RuntimeError):
            vae(folder, backend, "--resume")
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if not k.startswith(".partial")} == before
    assert set(json.loads((folder / "manifest.json").read_text())["files"]) == RESULTS
    # the next run clears what the interrupted one staged
    monkeypatch.undo()
    assert vae(folder, backend, "--resume") == 0
    check_manifest(folder, "vae", RESULTS)


@pytest.mark.parametrize("place", ["file", "under a file", "/dev/null"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_checked_before_any_work(backend, place, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_bytes(NOTES)
    out = {"file": afile, "under a file": afile / "run", "/dev/null": Path("/dev/null")}[place]
    assert vae(out, backend) == 2
    line = one_line_error(capsys)
    assert f"--out {out}" in line
    assert afile.read_bytes() == NOTES and {p.name for p in tmp_path.iterdir()} == {"afile"}


# ----------------------------------------------------------------------------------- progress lines
SCRIPT = Path(sys.executable).parent / "ppl-reparam"


@pytest.mark.skipif(not SCRIPT.exists(), reason=f"no console script at {SCRIPT} (not installed)")
def test_progress_lines_on_a_piped_stderr(tmp_path):
    out = tmp_path / "run"
    loud = [a for a in TINY if a != "--quiet"]
    result = subprocess.run([str(SCRIPT), "vae", *loud, "--variance-reps", "5", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and lines, result.stderr
    assert all(line.startswith("vae (pyro) ") for line in lines), result.stderr
    assert any(line.startswith("vae (pyro) epoch 0: measuring") for line in lines), result.stderr
    assert any(line.startswith("vae (pyro) epoch 1/1: test ELBO pathwise ") for line in lines), result.stderr



def test_quiet_prints_no_progress(tmp_path, capsys):
    """``--quiet``: nothing on stderr (in-process: capsys's stderr is no terminal either)."""
    assert main(["vae", *TINY, "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------ the other subcommands
OTHER = {
    "toy": (["--samples", "10", "--reps", "5", "--estimators", "score,pathwise", "--quiet"],
            {"toy.csv", "toy.json", "toy.png"}, "toy.json"),
    "compare": (["--model", "toy", "--estimators", "score,pathwise", "--reps", "5", "--warmup", "0", "--quiet"],
                {"compare.csv", "compare.json", "compare.md", "compare.png"}, "compare.json"),
    "families": (["--samples", "5"], {"families.csv", "families.json", "families.md"}, "families.json"),
}


@pytest.mark.parametrize("command", list(OTHER))
def test_second_run_replaces_the_set(command, tmp_path):
    args, files, summary = OTHER[command]
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(NOTES)
    assert main([command, *args, "--seed", "1", "--out", str(folder)]) == 0
    check_manifest(folder, command, files)
    first = snapshot(folder)
    (folder / f".{summary}.x1y2.tmp").write_bytes(b"stale")
    assert main([command, *args, "--seed", "2", "--out", str(folder)]) == 0
    check_manifest(folder, command, files)
    assert json.loads((folder / summary).read_text())["seed"] == 2
    assert snapshot(folder)[summary] != first[summary]
    assert {p.name for p in folder.iterdir()} == files | {"manifest.json", "notes.txt"}
    assert (folder / "notes.txt").read_bytes() == NOTES
