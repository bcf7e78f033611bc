"""jaxcompare: compare trained neural networks as scientific instruments, in JAX.

The flat namespace holds the kernels (``trace_ntk``, ``empirical_ntk``, ...), kernel surrogates (``fit_kglm``, ...),
alpha-trimming (``alpha_hat``, ...) and metrics (``accuracy``, ``ece``, ...). Areas with many names of their own live
in subpackages: ``jaxcompare.lwr`` (linear-width simulator), ``jaxcompare.spectra`` (random-matrix theory),
``jaxcompare.embed`` (embedding microscope).
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import metrics, ntk, surrogate, trimming  # noqa: E402
from .metrics import *  # noqa: F401,F403,E402
from .ntk import *  # noqa: F401,F403,E402
from .surrogate import *  # noqa: F401,F403,E402
from .trimming import *  # noqa: F401,F403,E402
from . import embed, lwr, spectra  # noqa: E402,F401

__all__ = [
    *ntk.__all__,
    *surrogate.__all__,
    *trimming.__all__,
    *metrics.__all__,
    "ntk",
    "surrogate",
    "trimming",
    "metrics",
    "lwr",
    "spectra",
    "embed",
]
