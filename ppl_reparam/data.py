"""Binarized image data for the variational autoencoder (numpy only, no torch or jax).

Sources (``load_dataset(source)``):

* ``"digits"`` (default): scikit-learn's embedded ``load_digits``, 1,797 8x8 images with
  pixel values 0..16, scaled to [0, 1] by dividing by 16.
* A path to a local grayscale image file, the format detected from its bytes, not its name:

  - an IDX image file (MNIST's ``train-images-idx3-ubyte``: magic 0x00000803, then the
    big-endian uint32 dims n, rows, cols, then n*rows*cols uint8 pixels), plain or gzipped;
  - an ``.npz``: the Keras ``mnist.npz`` layout (``x_train``, ``x_test``, optional labels,
    ignored), whose own split is kept; or an ``images`` key or a single array, split as below.
    Arrays are n x rows x cols, uint8 0..255 or floats already in [0, 1].

  uint8 pixels are scaled to [0, 1] by dividing by 255.

Split: unless the file has its own, ``perm = numpy.random.default_rng(seed).permutation(n)``;
the test set is ``perm[:n_test]`` with ``n_test = round(n * test_fraction)`` (clipped to
1..n-1) and the training set is ``perm[n_test:]``, both in permutation order. The same seed
gives the same split on every machine (for a given NumPy version).

Binarization: the fixed rule is ``pixel = 1 if scaled value >= 0.5 else 0`` (digits: raw value
>= 8; 8-bit images: raw value >= 128), giving ``Dataset.train``/``Dataset.test``. Dynamic
binarization (``binarize``) draws a fresh ``Bernoulli(p = scaled value)`` per pixel from
``Dataset.train_probs``, e.g. once per epoch.

Errors: a missing file raises ``FileNotFoundError``; any unreadable or malformed file (truncated,
wrong magic, corrupt gzip, npz without recognizable keys, wrong dimensions or values) raises
``DataError`` (a ``ValueError``). Both messages name the file and the expected format.
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DataError", "Dataset", "binarize", "load_dataset", "minibatches"]

THRESHOLD = 0.5
EXPECTED_FORMAT = (
    "expected an IDX image file (magic 0x00000803, uint8 n x rows x cols), optionally gzipped, "
    "or an .npz with x_train/x_test, images, or a single n x rows x cols array "
    "(uint8 0..255 or floats in [0, 1])"
)
_IDX_MAGIC = 0x00000803


class DataError(ValueError):
    """A data file that exists but cannot be read as a grayscale image set."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of flattened images (row-major, one image per row).

    ``train``/``test`` are float32 0/1 (fixed threshold rule); ``train_probs``/``test_probs``
    are the float32 scaled intensities in [0, 1], for dynamic binarization.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    train_probs: np.ndarray
    test_probs: np.ndarray
    image_shape: tuple[int, int]

    @property
    def dim(self) -> int:
        """Number of pixels per image, D = rows * cols."""
        return self.train.shape[1]


def load_dataset(
    source: str | os.PathLike[str] = "digits", *, seed: int = 0, test_fraction: float = 0.2
) -> Dataset:
    """Load ``"digits"`` or the image file at path ``source`` as a binarized :class:`Dataset`.

    ``seed`` and ``test_fraction`` (in (0, 1)) define the random split; they are unused for a
    Keras-layout npz, which brings its own split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if source == "digits":
        from sklearn.datasets import load_digits

        images = (load_digits().images / 16.0).astype(np.float32)
        return _split("digits", images, seed, test_fraction)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {EXPECTED_FORMAT}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise _error(path, f"corrupt gzip data ({e})") from e
    if raw[:4] == b"PK\x03\x04":
        return _load_npz(path, raw, seed, test_fraction)
    return _split(path.name, _scale(path, _parse_idx(path, raw)), seed, test_fraction)


def binarize(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dynamic binarization: an independent Bernoulli(``probs``) draw per entry, as float32 0/1."""
    return (rng.random(np.shape(probs)) < probs).astype(np.float32)


def minibatches(
    x: np.ndarray, batch_size: int, rng: np.random.Generator | None
) -> Iterator[np.ndarray]:
    """Yield consecutive row batches of ``x`` (one epoch); rows shuffled by ``rng`` if given.

    Every row appears exactly once; the last batch is smaller when ``batch_size`` does not
    divide ``len(x)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    order = rng.permutation(len(x)) if rng is not None else None

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(x), batch_size):
            stop = start + batch_size
            yield x[start:stop] if order is None else x[order[start:stop]]

    return batches()


def _error(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; {EXPECTED_FORMAT}")


def _parse_idx(path: Path, raw: bytes) -> np.ndarray:
    if len(raw) < 16:
        raise _error(path, f"only {len(raw)} bytes, shorter than a 16-byte IDX header")
    magic, n, rows, cols = (int(v) for v in np.frombuffer(raw, ">u4", count=4))
    if magic != _IDX_MAGIC:
        raise _error(path, f"wrong magic number 0x{magic:08x}")
    expected = n * rows * cols
    if len(raw) - 16 != expected:
        raise _error(
            path,
            f"truncated or corrupt: header promises {n}x{rows}x{cols} = {expected} pixel bytes, "
            f"found {len(raw) - 16}",
        )
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)


def _load_npz(path: Path, raw: bytes, seed: int, test_fraction: float) -> Dataset:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _error(path, f"unreadable npz ({e})") from e
    if "x_train" in arrays and "x_test" in arrays:
        train, test = _scale(path, arrays["x_train"]), _scale(path, arrays["x_test"])
        if train.shape[1:] != test.shape[1:]:
            raise _error(path, f"x_train {train.shape} and x_test {test.shape} image sizes differ")
        return _make(path.name, train, test)
    if "images" in arrays or len(arrays) == 1:
        images = arrays["images"] if "images" in arrays else next(iter(arrays.values()))
        return _split(path.name, _scale(path, images), seed, test_fraction)
    raise _error(path, f"npz has no recognizable keys (found {sorted(arrays)})")


def _scale(path: Path, images: np.ndarray) -> np.ndarray:
    """Check an n x rows x cols image array and scale it to float32 in [0, 1]."""
    if images.ndim != 3 or images.shape[0] < 2 or min(images.shape) == 0:
        raise _error(path, f"wrong dimensions {images.shape}, need n x rows x cols with n >= 2")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise _error(path, f"unsupported pixel dtype {images.dtype}")
    if not (np.all(np.isfinite(images)) and images.min() >= 0.0 and images.max() <= 1.0):
        raise _error(path, f"float pixels outside [0, 1] (min {images.min()}, max {images.max()})")
    return images.astype(np.float32)


def _split(name: str, images: np.ndarray, seed: int, test_fraction: float) -> Dataset:
    n = len(images)
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return _make(name, images[perm[n_test:]], images[perm[:n_test]])


def _make(name: str, train: np.ndarray, test: np.ndarray) -> Dataset:
    train_probs = train.reshape(len(train), -1)
    test_probs = test.reshape(len(test), -1)
    return Dataset(
        name=name,
        train=(train_probs >= THRESHOLD).astype(np.float32),
        test=(test_probs >= THRESHOLD).astype(np.float32),
        train_probs=train_probs,
        test_probs=test_probs,
        image_shape=(int(train.shape[1]), int(train.shape[2])),
    )
