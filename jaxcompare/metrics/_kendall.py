"""Kendall's tau-b in O(n log n), matching ``scipy.stats.kendalltau`` including ties."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._validation import check_array, check_same_length, is_concrete
from ._labels import _float_dtype
from ._runs import run_bounds, run_lengths

__all__ = ["kendall_tau", "kendall_tau_test", "KendallTauResult"]


class KendallTauResult(NamedTuple):
    """Kendall's tau-b and its two-sided asymptotic p-value (as ``scipy.stats.kendalltau(method="asymptotic")``)."""

    statistic: jax.Array
    pvalue: jax.Array


def _count_inversions(r: jax.Array, acc_dtype: Any) -> jax.Array:
    """Number of pairs ``i < j`` with ``r[i] > r[j]`` for integer keys ``0 <= r < n``, in O(n log n).

    Binary (MSD radix) formulation: a pair is an inversion iff, at the most significant bit where the two keys
    differ, the earlier key has a 1. Going from the top bit down, elements are kept ordered by (key prefix above
    bit b, original position); at bit b each element with a 0 counts the 1s before it in its prefix group, then the
    group is stably partitioned by bit b (zeros first) with cumulative sums, O(n) per bit.
    """
    n = r.shape[0]
    n_bits = max(1, int(n - 1).bit_length())
    idx = jnp.arange(n, dtype=r.dtype)

    def one_bit(step, carry):
        r, inv = carry
        b = (n_bits - 1 - step).astype(r.dtype)
        group = r >> (b + 1)
        bit = (r >> b) & 1
        start, end = run_bounds(group)
        c1 = jnp.cumsum(bit)
        c1_ex = c1 - bit
        ones_before = c1_ex - c1_ex[start]
        inv = inv + jnp.sum(jnp.where(bit == 0, ones_before, 0).astype(acc_dtype))
        zeros_before = (idx - start) - ones_before
        zeros_total = (end - start + 1) - (c1[end] - c1_ex[start])
        new_pos = jnp.where(bit == 0, start + zeros_before, start + zeros_total + ones_before)
        return jnp.zeros_like(r).at[new_pos].set(r, unique_indices=True), inv

    return lax.fori_loop(0, n_bits, one_bit, (r, jnp.zeros((), acc_dtype)))[1]


def _tie_sums(t: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """From per-element run lengths ``t``: sums over runs of t(t-1)/2, t(t-1)(t-2), t(t-1)(2t+5)."""
    t = t.astype(dtype)
    # every run of length t has t elements, so dividing each element's contribution by t sums over runs
    return (jnp.sum((t - 1) / 2), jnp.sum((t - 1) * (t - 2)), jnp.sum((t - 1) * (2 * t + 5)))


@jax.jit
def _kendall_core(x: jax.Array, y: jax.Array):
    dtype = _float_dtype(x, y)
    n = x.shape[0]
    ys = jnp.sort(y)
    ry = jnp.searchsorted(ys, y, side="left").astype(jnp.int32)  # ranks of y, ties share the lowest rank
    perm = jnp.lexsort((ry, x))  # sort by x, then y
    xs, rys = x[perm], ry[perm]
    xtie, x0, x1 = _tie_sums(run_lengths(xs), dtype)
    ytie, y0, y1 = _tie_sums(run_lengths(ys), dtype)
    ntie = _tie_sums(run_lengths((xs, rys)), dtype)[0]
    dis = _count_inversions(rys, dtype)
    nf = jnp.asarray(n, dtype)
    tot = nf * (nf - 1) / 2
    con_minus_dis = tot - xtie - ytie + ntie - 2 * dis
    tau = con_minus_dis / jnp.sqrt(tot - xtie) / jnp.sqrt(tot - ytie)
    m = nf * (nf - 1)
    var = (m * (2 * nf + 5) - x1 - y1) / 18 + (2 * xtie * ytie) / m + x0 * y0 / (9 * m * (nf - 2))
    z = con_minus_dis / jnp.sqrt(var)
    pvalue = jax.scipy.special.erfc(jnp.abs(z) / jnp.sqrt(jnp.asarray(2.0, dtype)))
    return jnp.clip(tau, -1, 1), jnp.clip(pvalue, 0, 1)


def _check_pair(x: Any, y: Any, min_n: int) -> tuple[jax.Array, jax.Array]:
    xa = check_array(x, "x", ndim=1)
    ya = check_array(y, "y", ndim=1)
    n = check_same_length({"x": xa, "y": ya})
    if n < min_n:
        raise ValueError(f"x and y need at least {min_n} points, got {n}.")
    for name, a in (("x", xa), ("y", ya)):
        if is_concrete(a) and np.all(np.asarray(a) == np.asarray(a)[0]):
            raise ValueError(f"{name} is constant, so Kendall's tau is undefined (0/0).")
    return xa, ya


def kendall_tau(x: Any, y: Any) -> jax.Array:
    r"""Kendall's rank correlation tau-b, in O(n log n).

    ``tau_b = (n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2))`` with ``n_0 = n(n-1)/2``, ``n_c``/``n_d`` the numbers of
    concordant/discordant pairs and ``n_1``, ``n_2`` the numbers of pairs tied in ``x`` and in ``y``; identical to
    ``scipy.stats.kendalltau(x, y).statistic`` (variant ``"b"``). Algorithm: sort by ``(x, y)``, count ties with
    run lengths, and count discordant pairs as inversions of the ``y`` ranks (:func:`_count_inversions`).

    Args:
      x: ``(n,)`` real values, ``n >= 2``, not constant.
      y: ``(n,)`` real values, not constant.

    Returns:
      Scalar ``jax.Array`` in ``[-1, 1]`` (floating dtype of the inputs). Works under ``jit``/``vmap``; there a
      constant input gives NaN (as SciPy) because value checks need concrete arrays.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(kendall_tau(jnp.array([12., 2, 1, 12, 2]), jnp.array([1., 4, 7, 1, 0]))), 4)
      -0.4714
    """
    xa, ya = _check_pair(x, y, 2)
    return _kendall_core(xa, ya)[0]


def kendall_tau_test(x: Any, y: Any) -> KendallTauResult:
    """Kendall's tau-b with the two-sided asymptotic p-value (normal approximation with tie-corrected variance).

    Matches ``scipy.stats.kendalltau(x, y, method="asymptotic")``.

    Args:
      x: ``(n,)`` real values, ``n >= 3``.
      y: ``(n,)`` real values.

    Returns:
      :class:`KendallTauResult` ``(statistic, pvalue)``.

    Example:
      >>> import jax.numpy as jnp
      >>> res = kendall_tau_test(jnp.arange(10.0), jnp.arange(10.0))
      >>> float(res.statistic), float(res.pvalue) < 1e-3
      (1.0, True)
    """
    xa, ya = _check_pair(x, y, 3)
    return KendallTauResult(*_kendall_core(xa, ya))
