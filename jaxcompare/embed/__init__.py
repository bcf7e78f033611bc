"""jaxcompare.embed: the embedding microscope.

Tell whether and how sources of samples (real vs generated text, two models' outputs, original vs translated
documents) differ, from embedding vectors computed by any model: PCA/LDA projections (fit/apply ``Transform`` pairs
that compose with ``chain``), held-out separability with a confidence interval, a permutation two-sample test, the
samples furthest along a direction, loaders for embeddings computed elsewhere, a demo data set, figures and a report
section. Figures need matplotlib and the demo needs scikit-learn (both imported lazily).
"""

from __future__ import annotations

from ._demo import DemoEmbeddings, make_demo_embeddings
from ._extremes import Extremes, extremes
from ._io import EmbeddingData, load_embeddings, save_embeddings
from ._lda import LDAState, lda
from ._pca import PCAState, pca
from ._plots import plot_microscope, plot_projection
from ._report import microscope_report
from ._separability import Separability, separability
from ._svd import randomized_svd
from ._transform import Transform, chain
from ._two_sample import TwoSampleTest, mmd2, two_sample_test

__all__ = [
    "Transform",
    "chain",
    "randomized_svd",
    "PCAState",
    "pca",
    "LDAState",
    "lda",
    "Separability",
    "separability",
    "TwoSampleTest",
    "two_sample_test",
    "mmd2",
    "Extremes",
    "extremes",
    "EmbeddingData",
    "load_embeddings",
    "save_embeddings",
    "DemoEmbeddings",
    "make_demo_embeddings",
    "plot_projection",
    "plot_microscope",
    "microscope_report",
]
