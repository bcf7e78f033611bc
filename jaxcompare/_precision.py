"""The matmul precision of the package's Gram products, eigen-decompositions and kernel contractions.

``HIGHEST`` (full float32 accuracy on every backend: no TF32 on GPU, no bf16 passes on TPU) wherever a result is
compared with a float64 oracle or feeds an eigen-decomposition; it is the one constant every module imports.
"""

from __future__ import annotations

import jax

__all__ = ["HIGHEST"]

HIGHEST = jax.lax.Precision.HIGHEST
