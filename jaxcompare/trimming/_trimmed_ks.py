"""The alpha-trimmed Kolmogorov–Smirnov distance."""

from __future__ import annotations

from typing import Any

import jax

from .._checked import traced_range
from .._validation import check_array, check_float
from ._common import check_samples, sort_input
from ._core import make_grid, trimmed_distance

__all__ = ["trimmed_ks"]


def trimmed_ks(candidate: Any, reference: Any, alpha: Any) -> jax.Array:
    r"""Alpha-trimmed KS distance ``d_alpha(F0, F) = min_{F~ in R_alpha(F)} sup_x |F0(x) - F~(x)|``.

    Only the candidate ``F`` is trimmed: ``F~`` reweights the candidate's points with weights
    ``w_k in [0, L p_k]``, ``sum w = 1``, ``L = 1/(1 - alpha)`` (equivalently ``F = (1 - alpha) F~ + alpha Q``).
    Closed form (exact, ties included) on the sorted pooled values ``z``:

    ``d_alpha = max(A, B, C/2, 0)`` with ``u_i = F0(z_i-) - L F(z_i-)``, ``l_i = F0(z_i) - L F(z_i)``,
    ``A = max u_i``, ``B = max [(1 - F0(z_i)) - L (1 - F(z_i))]``, ``C = max_{j<i} (u_i - l_j)``.

    ``alpha = 0`` gives the two-sample KS statistic ``sup |F0 - F|`` (``scipy.stats.ks_2samp``); ``d_alpha`` is
    non-increasing in ``alpha``. Cost ``O((m + log n) log m)`` after sorting the reference; shapes are fixed, so it
    runs under ``jit`` and ``vmap`` (over candidates, references or ``alpha``).

    Args:
      candidate: ``(m,)`` scores of the model under test (the sample that is trimmed).
      reference: ``(n,)`` reference scores (e.g. the pooled scores of an ensemble).
      alpha: trimming level in ``[0, 1)``.

    Returns:
      Scalar ``jax.Array`` in ``[0, 1]`` in the common floating dtype of the samples.

    Raises:
      ValueError: empty or non-1-D samples, NaN/inf scores, ``alpha`` outside ``[0, 1)`` (value checks apply to
        concrete inputs; under ``jit``/``vmap`` they run inside :func:`jaxcompare.checked` only).

    Example:
      >>> import jax.numpy as jnp
      >>> ref = jnp.array([0.0, 1.0, 2.0, 3.0])
      >>> cand = jnp.array([0.0, 1.0, 2.0, 3.0, 10.0])     # one outlier out of five
      >>> round(float(trimmed_ks(cand, ref, 0.0)), 6), round(float(trimmed_ks(cand, ref, 0.2)), 6)
      (0.2, 0.0)
    """
    c, r, dtype = check_samples(candidate, reference)
    a = check_array(alpha, "alpha", ndim=0, min_size=0)
    check_float(alpha, "alpha", low=0.0, high=1.0, high_open=True)
    traced_range(a, "alpha", 0.0, 1.0, high_open=True)
    return _trimmed_ks(c, r, a.astype(dtype))


@jax.jit
def _trimmed_ks(c: jax.Array, r: jax.Array, alpha: jax.Array) -> jax.Array:
    grid = make_grid(c, sort_input(r))
    return trimmed_distance(grid, 1 / (1 - alpha), c.dtype)
