"""Test configuration (shared/style.md): float64 available for oracles, strict rank promotion, quiet progress bars."""

import os

os.environ.setdefault("JAXCOMPARE_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
# The suite is dominated by compiling small programs: LLVM at -O0 compiles them about a third faster (measured:
# tests/test_ntk.py 198 s -> 158 s, user CPU -32 %). XLA's own optimizations (fusion, layouts, algebraic
# simplification) stay on, so the programs tested are the ones users run, only code-generated with fewer LLVM passes.
# Subprocesses inherit it (workers that need simulated devices append their flag to it).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402

# resident memory of a pytest worker above which JAX's compiled programs are dropped after a test file
_CACHE_LIMIT = 2 * 2**30


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after a test file once the worker holds more than 2 GiB: a worker runs dozens of
    files, and the caches grew one worker past 5 GiB (an XLA compile then aborted in CI). Below that they are kept,
    so that the programs files share (kernels of the same small models, the metrics) are compiled once."""
    yield
    from jaxcompare.ntk._memory import release_memory, resident_bytes

    if resident_bytes() > _CACHE_LIMIT:
        jax.clear_caches()
        release_memory()
