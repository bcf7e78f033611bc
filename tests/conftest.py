"""Test configuration (shared/style.md): float64 available for oracles, strict rank promotion, quiet progress bars."""

import os

os.environ.setdefault("JAXCOMPARE_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test file: a pytest worker runs hundreds of files, and the caches
    grew one worker past 5 GiB (an XLA compile then aborted in CI)."""
    yield
    jax.clear_caches()
