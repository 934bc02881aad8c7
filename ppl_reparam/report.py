"""Tables of results as CSV, JSON and Markdown, written atomically (framework-free).

A table is a list of rows, each a ``dict`` from column name to a number or a string, in column order.
Files are written to a temporary file in the target's folder and renamed over it, so that an
interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import csv
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
