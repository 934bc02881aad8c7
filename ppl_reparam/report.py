"""Tables of results as CSV, JSON and Markdown, written atomically (framework-free).

A table is a list of rows, each a ``dict`` from column name to a number or a string, in column order.
Files are written to a temporary file in the target's folder and renamed over it, so that an
interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Row = Mapping[str, Any]
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(rows: Sequence[Row], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` as CSV with a header from the first row's keys."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` (rows, dicts, numpy values) as indented JSON."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits, everything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Row]) -> str:
    """``rows`` as a GitHub Markdown table."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def gradient_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten ``{estimator: GradientStats}`` (as from ``compare_estimators``) into one row per
    estimator and parameter element: mean, standard error, variance with its interval, per-sample
    variance, SNR, and the measurement's seconds."""
    import numpy as np

    rows = []
    for estimator, stats in results.items():
        for name, s in stats.items():
            low, high = s.variance_ci
            for index in np.ndindex(np.shape(s.mean)):
                element = name + (f"[{','.join(map(str, index))}]" if index else "")
                rows.append(
                    {
                        "estimator": estimator,
                        "parameter": element,
                        "num_particles": s.num_particles,
                        "num_reps": s.num_reps,
                        "mean": float(np.asarray(s.mean)[index]),
                        "standard_error": float(np.asarray(s.standard_error)[index]),
                        "variance": float(np.asarray(s.variance)[index]),
                        "variance_ci_low": float(np.asarray(low)[index]),
                        "variance_ci_high": float(np.asarray(high)[index]),
                        "per_sample_variance": float(np.asarray(s.per_sample_variance)[index]),
                        "snr": float(np.asarray(s.snr)[index]),
                        "seconds": stats.seconds,
                    }
                )
    return rows


def check_output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` as a folder that results can be written to (created if missing), checked before any work
    starts; a ValueError naming ``option`` if it is a file, lies under one, or cannot be written."""
    path = Path(path)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "is" if existing == path else f"lies under {existing}, which is"
                raise ValueError(f"{option} {path}: it {where} a file, not a folder; give a folder for the results")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write there ({e.strerror or e}); give a writable folder") from None
    return path


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``folder`` (``.<name>.*.tmp``)."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


MANIFEST = "manifest.json"
"""Written last by :class:`ResultSet`: the files of the last complete set of results, with digests."""


def _manifest_files(path: Path) -> list[str]:
    """The file names a manifest lists (none if it is missing or unreadable)."""
    try:
        files = json.loads(path.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in files if isinstance(name, str) and "/" not in name and not name.startswith(".")]


class ResultSet:
    """A command's result files, written as one set into ``folder``.

    Files are written under the staging folder ``folder/.partial`` (:meth:`path` gives their names
    there); on leaving the block without an error the old manifest is removed, each file is moved into
    ``folder`` (``os.replace``), and a new :data:`MANIFEST` listing them with their SHA-256 digests is
    written last. An interrupted run leaves the previous set as it was, or (interrupted while moving)
    a folder without a manifest; the next run clears the staging folder and stale temporaries."""

    def __init__(self, folder: str | os.PathLike[str], command: str):
        self.folder = check_output_folder(folder)
        self.command = command
        self.staging = self.folder / ".partial"
        self.files: list[Path] = []

    def __enter__(self) -> ResultSet:
        remove_stale_temporaries(self.folder)
        if self.staging.exists():
            for stale in self.staging.iterdir():
                stale.unlink()
        self.staging.mkdir(exist_ok=True)
        return self

    def path(self, name: str) -> Path:
        """Where to write the result file ``name`` (in the staging folder)."""
        return self.staging / name

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> None:
        if kind is not None:
            return
        staged = sorted(p for p in self.staging.iterdir() if p.is_file())
        previous = self.folder / MANIFEST
        old_files = set(_manifest_files(previous))
        previous.unlink(missing_ok=True)
        for name in old_files - {p.name for p in staged}:  # the last set's files this one does not have
            (self.folder / name).unlink(missing_ok=True)
        digests = {}
        for p in staged:
            digests[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
            os.replace(p, self.folder / p.name)
            self.files.append(self.folder / p.name)
        self.staging.rmdir()
        write_json({"command": self.command, "files": digests}, self.folder / MANIFEST)


CHECKED_MAGIC = b"ppl-reparam checked file v1\n"


def atomic_write_checked(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write ``payload`` atomically behind a header and its SHA-256 digest, so that
    :func:`read_checked` can tell a damaged file (flipped bytes, truncation) from a good one."""
    return atomic_write_bytes(path, CHECKED_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def read_checked(path: str | os.PathLike[str], what: str, remedy: str) -> bytes:
    """The payload of a file written by :func:`atomic_write_checked`; a ValueError naming the file, what
    it should be (``what``) and ``remedy`` if it is not one or its digest does not match."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the {what} ({e.strerror or e}); {remedy}") from None
    if not raw.startswith(CHECKED_MAGIC):
        problem = "it is empty" if not raw else "it is not one written by this version of ppl-reparam"
        raise ValueError(f"{path}: not a {what} ({problem}); {remedy}")
    digest, _, payload = raw[len(CHECKED_MAGIC) :].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"{path}: the {what} is damaged (its SHA-256 digest does not match: truncated or altered); "
                         f"{remedy}")
    return payload
