"""jaxcompare: compare trained neural networks as scientific instruments, in JAX.

The flat namespace holds the kernels (``trace_ntk``, ``empirical_ntk``, ...), kernel surrogates (``fit_kglm``, ...),
alpha-trimming (``alpha_hat``, ...) and metrics (``accuracy``, ``ece``, ...). Areas with many names of their own live
in subpackages: ``jaxcompare.lwr`` (linear-width simulator), ``jaxcompare.spectra`` (random-matrix theory),
``jaxcompare.embed`` (embedding microscope), ``jaxcompare.compare`` (your own checkpoints). Kernel similarity (``cka``,
``kernel_similarity``...) lives in ``jaxcompare.similarity`` and is flat too.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import compare, embed, lwr, metrics, ntk, similarity, spectra, surrogate, trimming  # noqa: E402  # noqa: E402,F401
from ._checked import checked  # noqa: E402
from ._results import Result, SolverWarning  # noqa: E402
from .compare import compare_models, load_checkpoint, load_checkpoints, load_comparison, save_params  # noqa: E402
from .metrics import *  # noqa: F401,F403,E402
from .ntk import *  # noqa: F401,F403,E402
from .similarity import *  # noqa: F401,F403,E402
from .surrogate import *  # noqa: F401,F403,E402
from .trimming import *  # noqa: F401,F403,E402

__all__ = [
    *ntk.__all__,
    *surrogate.__all__,
    *trimming.__all__,
    *metrics.__all__,
    *similarity.__all__,
    "compare_models",
    "load_comparison",
    "load_checkpoint",
    "load_checkpoints",
    "save_params",
    "checked",
    "Result",
    "SolverWarning",
    "ntk",
    "surrogate",
    "trimming",
    "metrics",
    "similarity",
    "compare",
    "lwr",
    "spectra",
    "embed",
]
