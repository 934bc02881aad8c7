"""The family-by-family study of ``ppl-reparam families``, its framework-free part."""

DEFAULT_SAMPLES = 100_000
"""Per-sample gradients per estimator and family."""
