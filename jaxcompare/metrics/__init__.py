"""jaxcompare.metrics: classic comparisons of models — accuracy, churn, calibration (ECE), Kendall's tau.

Conventions: ``pred`` is ``(n, C)`` scores (argmax label) or ``(n,)`` integer labels; binary logit gaps ``s`` become
labels with ``s > 0`` and probabilities with :func:`binary_probs`.
"""
from ._agreement import accuracy, churn, pairwise_churn
from ._calibration import ReliabilityBins, ece, reliability_bins
from ._kendall import KendallTauResult, kendall_tau, kendall_tau_test
from ._labels import binary_probs, ensemble_label, hard_labels

__all__ = [
    "accuracy",
    "churn",
    "pairwise_churn",
    "ece",
    "reliability_bins",
    "ReliabilityBins",
    "kendall_tau",
    "kendall_tau_test",
    "KendallTauResult",
    "binary_probs",
    "ensemble_label",
    "hard_labels",
]
