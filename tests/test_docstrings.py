"""Every example in the package's docstrings runs and prints what it shows (doctest).

The examples see ``jax``, ``jnp``, ``np``, ``jc`` (``jaxcompare``) and the subpackages by name (``embed``, ``lwr``,
``ntk``, ``surrogate``, ``trimming``, ``metrics``, ``spectra``); anything else they import themselves. They run in a
temporary working directory, under the suite's settings (float64 enabled, strict rank promotion).
"""

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompare

SUBPACKAGES = ("embed", "lwr", "ntk", "surrogate", "trimming", "metrics", "spectra")
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(jaxcompare.__path__, "jaxcompare.") if not m.name.endswith("__main__")
)


def _globs():
    g = dict(jax=jax, jnp=jnp, np=np, jc=jaxcompare)
    g.update({k: importlib.import_module(f"jaxcompare.{k}") for k in SUBPACKAGES})
    return g


def test_modules_found():
    assert len(MODULES) > 40 and "jaxcompare.ntk._kernels" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(name)
    res = doctest.testmod(
        mod, extraglobs=_globs(), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False
    )
    assert res.failed == 0, f"{res.failed} of {res.attempted} docstring examples in {name} failed (output above)"
