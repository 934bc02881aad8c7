"""Tests for ppl_reparam.data: digits, IDX and npz loading, splits, binarization, batching."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ppl_reparam.data import (
    EXPECTED_FORMAT,
    DataError,
    Dataset,
    binarize,
    load_dataset,
    minibatches,
)

N_DIGITS = 1797


def _idx_bytes(images: np.ndarray, magic: int = 0x00000803) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()


def _random_images(n: int = 30, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset()


# --- digits ---------------------------------------------------------------------------------


def test_digits_shapes(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.image_shape == (8, 8)
    assert digits.dim == 64
    assert len(digits.test) == round(0.2 * N_DIGITS) == 359
    assert len(digits.train) == N_DIGITS - 359
    for x in (digits.train, digits.test, digits.train_probs, digits.test_probs):
        assert x.dtype == np.float32 and x.shape[1] == 64
    assert digits.train_probs.shape == digits.train.shape
    assert digits.test_probs.shape == digits.test.shape


def test_digits_split_is_seeded_permutation(digits: Dataset) -> None:
    full = (load_digits().data / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(N_DIGITS)  # the documented split rule
    np.testing.assert_array_equal(digits.test_probs, full[perm[:359]])
    np.testing.assert_array_equal(digits.train_probs, full[perm[359:]])
    # Disjoint and together a permutation of the full set (all digits rows are distinct).
    assert len(np.unique(full, axis=0)) == N_DIGITS
    both = np.concatenate([digits.train_probs, digits.test_probs])
    np.testing.assert_array_equal(_sorted_rows(both), _sorted_rows(full))


def test_digits_split_determinism(digits: Dataset) -> None:
    again = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(again.train_probs, digits.train_probs)
    np.testing.assert_array_equal(again.test, digits.test)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other.test_probs, digits.test_probs)
    half = load_dataset("digits", test_fraction=0.5)
    assert len(half.test) == round(0.5 * N_DIGITS) and len(half.train) == N_DIGITS - len(half.test)


def test_digits_fixed_threshold(digits: Dataset) -> None:
    for x, probs in ((digits.train, digits.train_probs), (digits.test, digits.test_probs)):
        assert set(np.unique(x)) <= {0.0, 1.0}
        np.testing.assert_array_equal(x, (probs >= 0.5).astype(np.float32))
        assert probs.min() >= 0.0 and probs.max() <= 1.0
    # Raw digit value 8 scales to exactly 0.5 and is a 1; 7 is a 0.
    assert np.any(digits.train_probs == 0.5)
    assert np.all(digits.train[digits.train_probs == 0.5] == 1.0)
    assert np.all(digits.train[digits.train_probs == 7 / 16] == 0.0)


# --- dynamic binarization -------------------------------------------------------------------


def test_binarize_values_and_reproducibility(digits: Dataset) -> None:
    a = binarize(digits.train_probs, np.random.default_rng(5))
    b = binarize(digits.train_probs, np.random.default_rng(5))
    c = binarize(digits.train_probs, np.random.default_rng(6))
    assert a.dtype == np.float32 and a.shape == digits.train_probs.shape
    assert set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # p = 0 and p = 1 are deterministic.
    np.testing.assert_array_equal(a[digits.train_probs == 0.0], 0.0)
    np.testing.assert_array_equal(a[digits.train_probs == 1.0], 1.0)


def test_binarize_mean_matches_probs() -> None:
    probs = np.arange(17, dtype=np.float32) / 16  # every digits intensity
    draws = 20_000
    mean = binarize(np.tile(probs, (draws, 1)), np.random.default_rng(0)).mean(axis=0)
    # Each column mean is Binomial(draws, p) / draws with standard error sqrt(p(1-p)/draws).
    # Allowing 6 standard errors gives a two-sided normal tail of 2e-9 per column, so < 4e-8
    # for all 17 columns together (Bonferroni): far below the 1e-6 false-failure target.
    se = np.sqrt(probs * (1 - probs) / draws)
    assert np.all(np.abs(mean - probs) <= 6 * se)


# --- IDX files ------------------------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_round_trip(tmp_path: Path, gzipped: bool) -> None:
    images = _random_images()
    raw = _idx_bytes(images)
    path = tmp_path / "images.bin"  # no telling suffix: the format is detected from the bytes
    path.write_bytes(gzip.compress(raw) if gzipped else raw)
    data = load_dataset(str(path), seed=3)
    assert data.name == "images.bin"
    assert data.image_shape == (28, 28) and data.dim == 784
    assert (len(data.train), len(data.test)) == (24, 6)
    flat = images.reshape(30, -1)
    perm = np.random.default_rng(3).permutation(30)
    np.testing.assert_allclose(data.test_probs, flat[perm[:6]] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data.train_probs, flat[perm[6:]] / 255.0, rtol=1e-6)
    # /255 then >= 0.5 means raw pixel >= 128.
    np.testing.assert_array_equal(data.train, (flat[perm[6:]] >= 128).astype(np.float32))
    np.testing.assert_array_equal(data.test, (flat[perm[:6]] >= 128).astype(np.float32))


# --- npz files ------------------------------------------------------------------------------


def test_npz_keras_layout_keeps_own_split(tmp_path: Path) -> None:
    x_train, x_test = _random_images(20, seed=2), _random_images(7, seed=3)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=np.zeros(20), x_test=x_test, y_test=np.zeros(7))
    data = load_dataset(path, seed=123, test_fraction=0.5)
    assert data.name == "mnist.npz" and data.image_shape == (28, 28)
    np.testing.assert_allclose(data.train_probs, x_train.reshape(20, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data.test_probs, x_test.reshape(7, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.test, (x_test.reshape(7, -1) >= 128).astype(np.float32))


@pytest.mark.parametrize("key", ["images", "arr_0"])
def test_npz_single_array_seeded_split(tmp_path: Path, key: str) -> None:
    images = np.random.default_rng(4).random((10, 5, 6)).astype(np.float64)  # floats in [0, 1)
    path = tmp_path / "imgs.npz"
    np.savez(path, **{key: images})
    data = load_dataset(path, seed=7, test_fraction=0.3)
    assert data.image_shape == (5, 6) and (len(data.train), len(data.test)) == (7, 3)
    perm = np.random.default_rng(7).permutation(10)
    flat = images.reshape(10, -1).astype(np.float32)
    np.testing.assert_array_equal(data.test_probs, flat[perm[:3]])
    np.testing.assert_array_equal(data.train, (flat[perm[3:]] >= 0.5).astype(np.float32))


# --- errors ---------------------------------------------------------------------------------


def _assert_names_file_and_format(err: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    message = str(err.value)
    assert str(path) in message
    assert EXPECTED_FORMAT in message
    assert "IDX" in message and "0x00000803" in message and "x_train" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.gz"
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(str(path))
    _assert_names_file_and_format(err, path)


def _bad_file_cases() -> dict[str, bytes]:
    good = _idx_bytes(_random_images(4))
    return {
        "truncated": good[:-100],
        "short header": good[:10],
        "wrong magic": _idx_bytes(_random_images(4), magic=0x00000801),
        "gz garbage": gzip.compress(b"this is not an image file at all"),
        "corrupt gz": b"\x1f\x8b" + b"\x00garbage" * 10,
        "empty": b"",
    }


@pytest.mark.parametrize("case", list(_bad_file_cases()))
def test_malformed_files(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad-images-idx3-ubyte.gz"
    path.write_bytes(_bad_file_cases()[case])
    with pytest.raises(DataError) as err:
        load_dataset(path)
    _assert_names_file_and_format(err, path)


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"foo": np.zeros((3, 4, 4)), "bar": np.zeros((3, 4, 4))}, "no recognizable keys"),
        ({"x_train": np.zeros((3, 4, 4)), "y_train": np.zeros(3)}, "no recognizable keys"),
        ({"images": np.zeros((3, 16))}, "wrong dimensions"),
        ({"images": np.full((3, 4, 4), 2.0)}, "outside [0, 1]"),
        ({"images": np.zeros((3, 4, 4), dtype=np.int64)}, "dtype"),
        ({"x_train": np.zeros((3, 4, 4)), "x_test": np.zeros((3, 5, 5))}, "differ"),
    ],
)
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], problem: str) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=re.escape(problem)) as err:
        load_dataset(path)
    _assert_names_file_and_format(err, path)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction must be in \\(0, 1\\)"):
        load_dataset("digits", test_fraction=fraction)


# --- minibatches ----------------------------------------------------------------------------


def test_batch_size_zero() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        minibatches(np.zeros((5, 2)), 0, None)


@pytest.mark.parametrize("seed", [None, 0])
def test_minibatches_cover_every_row_once(seed: int | None) -> None:
    x = np.arange(23, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    rng = None if seed is None else np.random.default_rng(seed)
    batches = list(minibatches(x, 5, rng))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    rows = np.concatenate(batches)[:, 0]
    np.testing.assert_array_equal(np.sort(rows), np.arange(23))
    if seed is None:
        np.testing.assert_array_equal(rows, np.arange(23))
    else:
        assert not np.array_equal(rows, np.arange(23))


def test_minibatches_seeded_shuffle() -> None:
    x = np.arange(100, dtype=np.float32)[:, None]

    def epoch(seed: int) -> np.ndarray:
        return np.concatenate(list(minibatches(x, 32, np.random.default_rng(seed))))

    np.testing.assert_array_equal(epoch(1), epoch(1))
    assert not np.array_equal(epoch(1), epoch(2))
    assert [len(b) for b in minibatches(x, 100, None)] == [100]
    assert [len(b) for b in minibatches(x, 1000, None)] == [100]
