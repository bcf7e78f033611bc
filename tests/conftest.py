"""Test configuration (shared/style.md): float64 available for oracles, strict rank promotion, quiet progress bars."""

import os

os.environ.setdefault("JAXCOMPARE_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
