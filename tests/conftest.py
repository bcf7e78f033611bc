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


# Seconds each test file took (the sum of its tests' times in `pytest -n 2 --dist loadfile --junitxml=...`,
# 2026-12-02 00:07 UTC on a slow VM day, 1729 s wall; test_recipes was cut by ~100 s after). `make test` hands files
# to its two workers in this order, longest first (`--no-loadscope-reorder`; xdist's default puts the files with the
# most tests first, which leaves the long files with few tests — README examples, notebooks, the multi-process and
# multi-device runs — for the end, where one worker may run them alone). Only the order depends on these numbers; a
# file not listed counts as short.
_FILE_SECONDS = {
    "test_ntk_structured": 314, "test_cli": 309, "test_docstrings": 270, "test_notebooks": 163, "test_readme": 158,
    "test_compare": 155, "test_ntk": 149, "test_ntk_architectures": 99, "test_ntk_projection_scaling": 97,
    "test_lwr": 96, "test_ntk_guards": 93, "test_conformance": 86, "test_similarity": 80, "test_calibration": 77,
    "test_recipes": 77, "test_distributed": 75, "test_output_probes": 74, "test_ntk_features": 67,
    "test_ntk_sharded": 65, "test_ntk_precision": 60, "test_ntk_inputs": 59, "test_embed_stats": 57,
    "test_study_sections": 57, "test_lwr_theorems": 51, "test_surrogate": 49, "test_trimming": 47,
    "test_spectra_layers": 40, "test_embed": 34, "test_surrogate_digits": 33, "test_x64_parity": 32,
    "test_project_disk": 31, "test_spectra": 30, "test_ntk_ooc": 28, "test_study": 28, "test_metrics": 27,
    "test_result_convention": 26, "test_trimming_protocol": 26, "test_compare_browser": 18, "test_conv_native": 17,
    "test_ntk_registry": 15, "test_embed_io": 14, "test_store_guards": 10,
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """Longest test files first (stable: each file's tests keep their order), see :data:`_FILE_SECONDS`."""
    items.sort(key=lambda item: -_FILE_SECONDS.get(item.path.stem, 5))
