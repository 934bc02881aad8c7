"""The reference both toy-sweep benchmarks time against: the plain NumPy loop of the classic notebook."""

import numpy as np

THETA = 2.0


def numpy_loop(samples: list[int], reps: int, seed: int = 0) -> None:
    """For each N, ``reps`` repetitions drawing N normals each, score function then pathwise."""
    rng = np.random.default_rng(seed)
    for n in samples:
        score, path = [], []
        for _ in range(reps):
            x = THETA + rng.standard_normal(n)
            score.append(np.mean(x**2 * (x - THETA)))
        for _ in range(reps):
            x = THETA + rng.standard_normal(n)
            path.append(np.mean(2 * x))
        np.var(score), np.var(path)
