"""Kernels of a trained network: the NTK family (shared/spec/ntk.md) as composable transforms.

Factories take a model function and return ``kernel_fn(params, x1, x2=None)``; transforms (``batched``) take a
kernel function and return one with the same signature.
"""

from .._precision import precision
from ._adapters import from_linen, from_nnx, from_stax, linen_layers_fn
from ._batching import batched
from ._common import Kernel, KernelSpec
from ._explain import Explanation, explain
from ._gather import gather, save_rows
from ._kernels import conjugate_kernel, embedding_kernel, empirical_ntk, pseudo_ntk, trace_ntk
from ._kron import KroneckerProjection, kronecker_projection
from ._ooc import kernel_to_disk
from ._ooc_ledger import load_kernel
from ._project_gradients import ProjectedKernel, project_gradients, projected_kernel
from ._projection import RandomProjection, random_projection
from ._registry import KERNELS, KernelInfo, kernel, kernel_label
from ._sharding import sharded
from ._sketch import StructuredProjection, structured_projection

__all__ = [
    "empirical_ntk",
    "trace_ntk",
    "pseudo_ntk",
    "conjugate_kernel",
    "embedding_kernel",
    "batched",
    "sharded",
    "kernel_to_disk",
    "load_kernel",
    "gather",
    "save_rows",
    "random_projection",
    "RandomProjection",
    "kronecker_projection",
    "KroneckerProjection",
    "structured_projection",
    "StructuredProjection",
    "project_gradients",
    "projected_kernel",
    "ProjectedKernel",
    "KernelSpec",
    "Kernel",
    "KERNELS",
    "KernelInfo",
    "kernel",
    "kernel_label",
    "explain",
    "Explanation",
    "from_linen",
    "from_nnx",
    "from_stax",
    "linen_layers_fn",
    "precision",
]
