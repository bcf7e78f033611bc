"""Kendall's tau-b in O(n log n), matching ``scipy.stats.kendalltau`` including ties."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax import lax

from .._checked import traced_finite
from .._validation import check_array, check_same_length, host_float64, is_concrete
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


# ------------------------------------------------------------------------------------------------------------------
# host path for concrete inputs (NumPy): faster than the traced O(n log n) program on CPU
# ------------------------------------------------------------------------------------------------------------------
TABLE_CELLS = 1 << 22  # contingency tables up to this many cells (32 MiB of int64) replace the inversion count


class _Runs(NamedTuple):
    """One variable's dense ranks on the host: ``m`` distinct values with multiplicities ``counts`` (by rank), and
    either the ranks ``r`` (lookup-table path) or the sorting permutation and run starts to compute them."""

    m: int
    counts: np.ndarray
    order: np.ndarray | None
    new: np.ndarray | None
    r: np.ndarray | None

    def ranks(self) -> np.ndarray:
        """0-based dense ranks (ties share a rank)."""
        if self.r is not None:
            return self.r
        r = np.empty(self.order.shape[0], np.int64)
        r[self.order] = np.cumsum(self.new, dtype=np.int64) - 1
        return r


def _dense_ranks(v: np.ndarray) -> _Runs:
    """Distinct values of ``v``: a lookup table for integer scores in a short range, else one ``argsort``."""
    n = v.shape[0]
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 4 * n and np.array_equal(v, np.floor(v)):  # integer scores in a short range: a lookup table
        off = (v - lo).astype(np.int64)
        counts = np.bincount(off)
        present = counts > 0
        table = np.cumsum(present) - 1
        return _Runs(int(table[-1]) + 1, counts[present], None, None, table[off])
    order = np.argsort(v)
    s = v[order]
    new = np.empty(n, bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    m = int(np.count_nonzero(new))
    counts = np.ones(n, np.int64) if m == n else np.diff(np.append(np.flatnonzero(new), n))
    return _Runs(m, counts, order, new, None)


def _bit_reversed(counts: np.ndarray, n_bits: int) -> np.ndarray:
    """``counts`` (zero-padded to ``2**n_bits``) permuted by the bit reversal of the index, as float64."""
    size = 1 << n_bits
    rev = np.zeros(size, np.int32)
    h = 1
    while h < size:  # rev of k + 1 bits = (2 rev, 2 rev + 1) of k bits
        rev[:h] *= 2
        np.add(rev[:h], 1, out=rev[h : 2 * h])
        h *= 2
    padded = np.zeros(size, np.float64)
    padded[: counts.shape[0]] = counts
    return padded[rev]


_BYTE_ONES = np.array([bin(v).count("1") for v in range(256)], np.float64)  # 1-bits of a byte
# Σ of the offsets (0 = most significant, as np.packbits packs) of the 1-bits of a byte
_BYTE_OFFSETS = np.array([sum(j for j in range(8) if v >> (7 - j) & 1) for v in range(256)], np.float64)


def _index_sum(mask: np.ndarray) -> tuple[int, int]:
    """Number of True entries of a boolean vector and the sum of their indices, from its packed bytes."""
    packed = np.packbits(mask)
    per_value = np.bincount(packed, minlength=256).astype(np.float64)
    first_index = np.bincount(packed, weights=np.arange(0, 8 * packed.shape[0], 8, dtype=np.float64), minlength=256)
    # integer-valued float64 sums below 2**53 (n < 9e7): exact
    return (
        round(float(np.sum(per_value * _BYTE_ONES))),
        round(float(np.sum(first_index * _BYTE_ONES + per_value * _BYTE_OFFSETS))),
    )


def _inversions_host(a: np.ndarray, n_bits: int, counts: np.ndarray | None = None) -> int:
    """Pairs ``i < j`` with ``a[i] > a[j]`` for ints ``0 <= a < 2**n_bits``: the bit-level count of
    :func:`_count_inversions` on a wavelet-matrix order, a few O(n) NumPy passes per bit.

    From the top bit down, each level stably moves all 0-bits before all 1-bits (``np.compress`` twice), which keeps
    the elements of equal prefix (the groups) contiguous and in input order; the groups follow each other in the
    bit-reversed order of their prefixes. At bit ``b`` the pairs decided there are the (1-bit, later 0-bit) pairs of
    a group: ``Σ_{0-bits} (index - group start) - Σ_groups z (z - 1) / 2`` with ``z`` the group's 0-bits. Group sizes
    and 0-bit counts depend only on the value ``counts`` (multiplicities of ``0 .. 2**n_bits - 1``): halving sums of
    the bit-reversed counts give them for every level, so no per-element group bookkeeping is needed.
    """
    n = a.shape[0]
    if counts is None:
        counts = np.bincount(a)
    per_level = [_bit_reversed(counts, n_bits)]  # level-b counts of (a >> b) in the groups' order
    for _ in range(n_bits):
        half = per_level[-1].shape[0] // 2
        per_level.append(per_level[-1][:half] + per_level[-1][half:])
    a = a.astype(np.uint16 if n_bits <= 16 else np.uint32)  # less memory traffic per pass
    bits = np.empty_like(a)
    one, zero = np.empty(n, bool), np.empty(n, bool)
    inv = 0
    for b in range(n_bits - 1, -1, -1):
        sizes = per_level[b + 1]
        z = per_level[b][: sizes.shape[0]]
        starts = np.cumsum(sizes) - sizes
        np.bitwise_and(a, 1 << b, out=bits)
        np.not_equal(bits, 0, out=one)
        k, one_index_sum = _index_sum(one)
        zero_index_sum = n * (n - 1) // 2 - one_index_sum
        # (np.sum, not a BLAS dot: its threads cost more than they save on a shared machine)
        inv += zero_index_sum - round(float(np.sum(z * starts))) - round(float(np.sum(z * (z - 1)))) // 2
        if b:
            np.logical_not(one, out=zero)
            a = np.concatenate((np.compress(zero, a), np.compress(one, a)))  # (compress without out= is faster)
    return inv


def _discordant_table(rx: np.ndarray, mx: int, ry: np.ndarray, my: int) -> tuple[int, np.ndarray]:
    """Discordant pairs from the ``mx × my`` contingency table: ``Σ T[a, b] #{x-rank > a, y-rank < b}``."""
    t = np.bincount(rx * my + ry, minlength=mx * my).reshape(mx, my)
    later = np.cumsum(t[::-1], axis=0)[::-1]
    later = np.concatenate((later[1:], np.zeros((1, my), later.dtype)), axis=0)  # rows > a
    d = np.cumsum(later, axis=1) - later  # columns < b
    return int(np.sum(t * d)), t[t > 1]


def _discordant_sorted(x: _Runs, y: _Runs) -> tuple[int, np.ndarray]:
    """Discordant pairs (and the lengths of the runs tied in both): sort by ``(x, y)`` and count the inversions of
    the y ranks over y's alphabet (pairs tied in x are then never counted)."""
    n = x.counts.sum()
    n_bits = max(1, (y.m - 1).bit_length())
    if x.m == n:  # no ties in x: the x order alone sorts by (x, y), and no pair is tied in both
        order = x.order
        if order is None:
            order = np.empty(n, np.int64)
            order[x.r] = np.arange(n)
        a = y.ranks()[order]
        tj = np.ones(1, np.int64)
    else:
        key = (x.ranks() << n_bits) | y.ranks()
        key.sort()
        new = np.empty(n, bool)
        new[0] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        tj = np.diff(np.append(np.flatnonzero(new), n))
        a = np.bitwise_and(key, (1 << n_bits) - 1, out=key)
    return _inversions_host(a, n_bits, y.counts), tj


def _kendall_host(x: np.ndarray, y: np.ndarray, pvalue: bool) -> tuple[float, float]:
    """tau-b (and the asymptotic p-value) in float64 NumPy, the same formulas as :func:`_kendall_core`."""
    n = x.shape[0]
    rx, ry = _dense_ranks(x), _dense_ranks(y)
    if rx.m * ry.m <= min(TABLE_CELLS, max(4 * n, 1 << 16)):
        dis, tj = _discordant_table(rx.ranks(), rx.m, ry.ranks(), ry.m)
    elif rx.m >= ry.m:
        dis, tj = _discordant_sorted(rx, ry)
    else:  # tau-b is symmetric: count inversions over the smaller alphabet (fewer bit levels)
        dis, tj = _discordant_sorted(ry, rx)
    tx, ty = rx.counts, ry.counts

    def sums(t):
        t = t[t > 1].astype(np.float64)
        return np.sum(t * (t - 1) / 2), np.sum(t * (t - 1) * (t - 2)), np.sum(t * (t - 1) * (2 * t + 5))

    (xtie, x0, x1), (ytie, y0, y1), ntie = sums(tx), sums(ty), sums(tj)[0]
    nf = float(n)
    tot = nf * (nf - 1) / 2
    con_minus_dis = tot - xtie - ytie + ntie - 2 * dis
    tau = min(max(con_minus_dis / np.sqrt(tot - xtie) / np.sqrt(tot - ytie), -1.0), 1.0)
    if not pvalue:
        return tau, np.nan
    m = nf * (nf - 1)
    var = (m * (2 * nf + 5) - x1 - y1) / 18 + (2 * xtie * ytie) / m + x0 * y0 / (9 * m * (nf - 2))
    p = float(scipy.special.erfc(abs(con_minus_dis / np.sqrt(var)) / np.sqrt(2.0)))
    return tau, min(max(p, 0.0), 1.0)


def _kendall(
    xa: jax.Array, ya: jax.Array, pvalue: bool, hosts: tuple[np.ndarray, np.ndarray] | None
) -> tuple[jax.Array, jax.Array]:
    if hosts is not None:
        tau, p = _kendall_host(*hosts, pvalue)
        dtype = _float_dtype(xa, ya)
        return jnp.asarray(tau, dtype), jnp.asarray(p, dtype)
    return _kendall_core(xa, ya)


def _check_pair(x: Any, y: Any, min_n: int) -> tuple[jax.Array, jax.Array, tuple[np.ndarray, np.ndarray] | None]:
    """The validated pair, and their float64 host values when both are concrete (NumPy inputs at their own
    precision: float64 values that differ must not tie because x64 is off)."""
    xa = check_array(x, "x", ndim=1)
    ya = check_array(y, "y", ndim=1)
    traced_finite(xa, "x")
    traced_finite(ya, "y")
    n = check_same_length({"x": xa, "y": ya})
    if n < min_n:
        raise ValueError(f"x and y need at least {min_n} points, got {n}.")
    if not (is_concrete(xa) and is_concrete(ya)):
        return xa, ya, None
    hosts = (host_float64(x, xa), host_float64(y, ya))
    for name, h in zip("xy", hosts):
        if np.all(h == h[0]):
            raise ValueError(f"{name} is constant, so Kendall's tau is undefined (0/0).")
    return xa, ya, hosts


def kendall_tau(x: Any, y: Any) -> jax.Array:
    r"""Kendall's rank correlation tau-b, in O(n log n).

    ``tau_b = (n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2))`` with ``n_0 = n(n-1)/2``, ``n_c``/``n_d`` the numbers of
    concordant/discordant pairs and ``n_1``, ``n_2`` the numbers of pairs tied in ``x`` and in ``y``; identical to
    ``scipy.stats.kendalltau(x, y).statistic`` (variant ``"b"``). Algorithm: sort by ``(x, y)``, count ties with
    run lengths, and count discordant pairs as inversions of the ``y`` ranks. Concrete inputs run on the host in
    float64 NumPy: with few distinct values (``#x-values × #y-values ≤ max(4n, 2¹⁶)``, at most ``2²²``) from the
    contingency table in ``O(n + table)``, else by a bit-level inversion count (``log2`` of the smaller number of
    distinct values passes of ``O(n)``). Traced inputs (``jit``/``vmap``) run the equivalent JAX program
    (:func:`_count_inversions`).

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
    xa, ya, hosts = _check_pair(x, y, 2)
    return _kendall(xa, ya, False, hosts)[0]


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
      >>> round(float(res.statistic), 12), float(res.pvalue) < 1e-3
      (1.0, True)
    """
    xa, ya, hosts = _check_pair(x, y, 3)
    return KendallTauResult(*_kendall(xa, ya, True, hosts))
