"""jaxcompare.similarity: compare models through their kernels (shared/spec/similarity.md).

- :func:`cka`, :func:`linear_cka`: centered kernel alignment of two kernels (or feature matrices) on the same
  points, with the biased or the unbiased (``debiased=True``) HSIC estimator.
- :func:`cka_test`: calibration of a CKA value against a permutation null (:class:`CKATest`).
- :func:`kernel_similarity`: the CKA and p-value matrix between the kernels of several models, possibly of different
  architectures (:class:`KernelSimilarity`), and its heatmap :func:`plot_similarity` (matplotlib, lazy).
"""

from ._cka import cka, linear_cka
from ._kernel_similarity import KernelSimilarity, kernel_similarity
from ._permutation import CKATest, cka_test
from ._plot import plot_similarity

__all__ = [
    "cka",
    "linear_cka",
    "cka_test",
    "CKATest",
    "kernel_similarity",
    "KernelSimilarity",
    "plot_similarity",
]
