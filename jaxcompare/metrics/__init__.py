"""jaxcompare.metrics: classic comparisons of models — accuracy, churn, calibration (ECE, smooth ECE, bootstrap
intervals, reliability diagrams), Kendall's tau.

Conventions: ``pred`` is ``(n, C)`` scores (argmax label) or ``(n,)`` integer labels; binary logit gaps ``s`` become
labels with ``s > 0`` and probabilities with :func:`binary_probs`.
"""

from ._agreement import accuracy, churn, pairwise_churn
from ._auroc import auroc
from ._calibration import ReliabilityBins, ece, reliability_bins
from ._intervals import BootstrapInterval, ece_interval, smooth_ece_interval
from ._kendall import KendallTauResult, kendall_tau, kendall_tau_test
from ._labels import binary_probs, ensemble_label, hard_labels
from ._plots import SmoothReliability, plot_reliability, smooth_reliability
from ._scores import SCORE_REDUCTIONS, logit_scores
from ._smooth_ece import smooth_ece, smooth_ece_sigma

__all__ = [
    "auroc",
    "logit_scores",
    "SCORE_REDUCTIONS",
    "accuracy",
    "churn",
    "pairwise_churn",
    "ece",
    "reliability_bins",
    "ReliabilityBins",
    "smooth_ece",
    "smooth_ece_sigma",
    "ece_interval",
    "smooth_ece_interval",
    "BootstrapInterval",
    "smooth_reliability",
    "SmoothReliability",
    "plot_reliability",
    "kendall_tau",
    "kendall_tau_test",
    "KendallTauResult",
    "binary_probs",
    "ensemble_label",
    "hard_labels",
]
