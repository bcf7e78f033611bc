"""jaxcompare.surrogate: kernel surrogates (kGLM) of a trained network, their faithfulness, and data attribution.

Pipeline (spec/surrogate.md): kernel → :func:`fit_kglm` → :func:`kglm_logits` → :func:`faithfulness` /
:func:`attribute` (→ :func:`plot_attribution`); :func:`surrogate_table` runs it for every kernel of one network
side by side.
"""

from ._attribution import Attribution, attribute, contributions
from ._faithfulness import Faithfulness, faithfulness
from ._kglm import KGLM, KGLMConvergenceWarning, fit_kglm, kglm_logits, kglm_proba
from ._plot import plot_attribution
from ._table import SURROGATE_KERNELS, SurrogateRow, SurrogateTable, surrogate_table

__all__ = [
    "KGLM",
    "KGLMConvergenceWarning",
    "fit_kglm",
    "kglm_logits",
    "kglm_proba",
    "Faithfulness",
    "faithfulness",
    "Attribution",
    "attribute",
    "contributions",
    "plot_attribution",
    "SurrogateRow",
    "SurrogateTable",
    "surrogate_table",
    "SURROGATE_KERNELS",
]
