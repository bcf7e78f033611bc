"""jaxcompare.trimming: alpha-trimmed Kolmogorov–Smirnov comparison of a model's scores with an ensemble's.

``trimmed_ks`` (the distance at a given trimming level), ``alpha_hat`` (the exact smallest level that passes a KS
threshold), ``ks_threshold`` (DKW or asymptotic thresholds), ``ensemble_alpha_hat`` (the bootstrap protocol over
many candidates) and ``w1_excess`` (the Wasserstein-ball analogue). Beyond scores: ``recipe_alpha`` /
``identify_recipe`` (α̂ between unaligned distributions, e.g. spectra, and the recipe classifier built on it) and
``select_members`` (α̂-guided ensembles).
"""

from ._alpha_hat import alpha_hat
from ._ensemble import PUBLISHED_ALPHA_GRID, EnsembleAlphaResult, bootstrap_halves, ensemble_alpha_hat, grid_alpha
from ._recipes import (
    IdentificationReport,
    RecipeIdentification,
    evaluate_identification,
    identify_recipe,
    pool_threshold,
    recipe_alpha,
)
from ._selection import MemberSelection, select_members
from ._threshold import ks_threshold
from ._trimmed_ks import trimmed_ks
from ._wasserstein import w1_excess

__all__ = [
    "trimmed_ks",
    "alpha_hat",
    "ks_threshold",
    "ensemble_alpha_hat",
    "EnsembleAlphaResult",
    "bootstrap_halves",
    "grid_alpha",
    "PUBLISHED_ALPHA_GRID",
    "w1_excess",
    "recipe_alpha",
    "pool_threshold",
    "identify_recipe",
    "RecipeIdentification",
    "evaluate_identification",
    "IdentificationReport",
    "select_members",
    "MemberSelection",
]
