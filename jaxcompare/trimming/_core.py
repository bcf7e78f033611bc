"""Fixed-shape closed form of the alpha-trimmed KS distance and the exact alpha-hat solver (private).

Notation (spec/trimming.md): reference eCDF ``F0`` (``n`` points), candidate eCDF ``F`` (``m`` points), trimming
bound ``L = 1/(1 - alpha)``. On the sorted pooled values ``z``,

* ``u_i = F0(z_i-) - L F(z_i-)``, ``l_i = F0(z_i) - L F(z_i)``,
* ``A = max_i u_i``, ``B = max_i [(1 - F0(z_i)) - L (1 - F(z_i))]``, ``C = max_{z_j < z_i} (u_i - l_j)``,
* ``d_alpha = max(A, B, C/2, 0)``.

All three terms are statements about the step function ``G(x) = F0(x) - L F(x)`` (``G(-inf) = 0``,
``G(+inf) = 1 - L``): ``A`` is its largest rise from ``-inf``, ``B`` its largest fall to ``+inf`` and ``C`` its
largest rise ``G(y) - G(x)``, ``x <= y``. So any ordered list of points that contains, for every stretch on which
one of the two eCDFs is constant, the stretch's largest ``G`` (``hi``) and smallest ``G`` (``lo``) gives the same
``d_alpha`` and the same constraints for alpha-hat. Three such grids (``make_grid``):

* ``pooled``: every pooled value, ``hi = u_i``, ``lo = l_i`` (the spec's formulation; ``m + n`` points, 2 sorts);
* ``candidate``: the candidate's values plus the reference's extremes (``m + 2`` points; on a stretch of constant
  ``F`` the function ``G`` increases, so ``hi`` is at the stretch's right end and ``lo`` at its left end); one sort
  of the candidate and ``O(m log n)`` searches in the sorted reference: the choice for a large pooled reference;
* ``reference``: the reference's stretches (``n + 1`` of them; ``G`` decreases on each) with the candidate's counts
  from a cumulative histogram: no sort at all, ``O(m log n + n)``: the choice when ``n`` is comparable to ``m``
  (XLA's CPU sort is an order of magnitude slower than NumPy's).

All eCDF values are kept as integer counts so that differences of equal masses are exactly zero.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..metrics._runs import run_bounds


def _pad_pow2(sorted_values: jax.Array) -> jax.Array:
    """Pad a sorted array with ``+inf`` to length ``2^k > n`` for :func:`count_below`."""
    n = sorted_values.shape[0]
    size = 1 << int(n).bit_length()
    return jnp.concatenate([sorted_values, jnp.full((size - n,), jnp.inf, sorted_values.dtype)])


def count_below(padded: jax.Array, q: jax.Array, inclusive: bool) -> jax.Array:
    """``#{r < q}`` (or ``#{r <= q}`` when ``inclusive``) for finite queries, by binary lifting on a padded array.

    Same result as ``jnp.searchsorted(r, q, side="left" / "right")``; written as an unrolled loop of clipped
    ``take``s because that is several times faster under ``vmap`` on CPU than the generic implementation.
    """
    size = padded.shape[0]
    pos = jnp.zeros(q.shape, jnp.int32)
    for b in range(int(size).bit_length() - 2, -1, -1):
        nxt = pos + (1 << b)
        v = jnp.take(padded, nxt - 1, mode="clip")
        pos = jnp.where(v <= q if inclusive else v < q, nxt, pos)
    return pos


class Grid(NamedTuple):
    """Integer eCDF counts describing ``G(x) = F0(x) - L F(x)`` on an ordered list of points.

    ``hi`` values ``G = ref_hi/n - L cand_hi/m`` (candidate maxima of ``G``) and ``lo`` values
    ``ref_lo/n - L cand_lo/m`` (candidate minima), in increasing ``x``. A rise ``hi[i] - lo[j]`` is a valid
    interval when ``j < i``, ``lo_ok[j]`` and ``hi_ok[i]``: on grids with repeated values only the last copy of a
    value may start a rise and only the first may end one, so no pair of equal values is ever formed (and no
    gather is needed: the prefix minimum is a shifted cumulative minimum).
    """

    ref_hi: jax.Array
    cand_hi: jax.Array
    ref_lo: jax.Array
    cand_lo: jax.Array
    hi_ok: jax.Array | None
    lo_ok: jax.Array | None
    n: int
    m: int


def _pooled_grid(candidate: jax.Array, ref_sorted: jax.Array) -> Grid:
    """The spec's formulation: every pooled value ``z_i``, ``hi = u_i`` (left limits), ``lo = l_i``."""
    cs = jnp.sort(candidate)
    g = jnp.sort(jnp.concatenate([cs, ref_sorted]))
    start, end = run_bounds(g)
    idx = jnp.arange(g.shape[0])
    rp, cp = _pad_pow2(ref_sorted), _pad_pow2(cs)
    return Grid(
        count_below(rp, g, False),
        count_below(cp, g, False),
        count_below(rp, g, True),
        count_below(cp, g, True),
        start == idx,
        end == idx,
        ref_sorted.shape[0],
        candidate.shape[0],
    )


def _candidate_grid(candidate: jax.Array, ref_sorted: jax.Array) -> Grid:
    """Candidate values plus the reference's extremes: ``g = [min(r_1, c_1), c_1..c_m, max(r_n, c_m)]``.

    Already sorted (one sort of the candidate, no second sort); candidate counts come from the runs of ``g``:
    ``#c < g = max(start - 1, 0)`` and ``#c <= g = min(end, m)`` (positions ``1..m`` hold the candidate).
    """
    m = candidate.shape[0]
    cs = jnp.sort(candidate)
    g = jnp.concatenate([jnp.minimum(ref_sorted[:1], cs[:1]), cs, jnp.maximum(ref_sorted[-1:], cs[-1:])])
    start, end = run_bounds(g)
    idx = jnp.arange(m + 2)
    rp = _pad_pow2(ref_sorted)
    return Grid(
        count_below(rp, g, False),
        jnp.maximum(start - 1, 0),
        count_below(rp, g, True),
        jnp.minimum(end, m),
        start == idx,
        end == idx,
        ref_sorted.shape[0],
        m,
    )


def _reference_grid(candidate: jax.Array, ref_sorted: jax.Array) -> Grid:
    """Stretches ``[r_k, r_{k+1})`` of constant ``F0`` (``k = 0..n``, ``r_0 = -inf``, ``r_{n+1} = +inf``); no sort.

    On a stretch ``G`` only decreases, so its largest value is ``hi[k] = G(r_k)`` and its smallest
    ``lo[k] = G(r_{k+1}-)``; a rise from stretch ``j`` to stretch ``i`` needs ``j < i``. The candidate's counts at the
    reference points come from cumulative histograms of ``#r < c`` and ``#r <= c`` (``O(m log n + n)``). A tied
    reference value creates a stretch of zero length whose ``lo`` is never smaller than the preceding stretch's
    ``lo`` at the same slope, so it changes neither the distance nor alpha-hat.
    """
    n, m = ref_sorted.shape[0], candidate.shape[0]
    _, run_end = run_bounds(ref_sorted)
    ref_le = run_end + 1  # n F0(r_k)
    rp = _pad_pow2(ref_sorted)
    below = count_below(rp, candidate, False)  # #r < c
    below_eq = count_below(rp, candidate, True)  # #r <= c
    ones = jnp.ones((m,), jnp.int32)
    hist = jnp.stack([jax.ops.segment_sum(ones, below, n + 1), jax.ops.segment_sum(ones, below_eq, n + 1)], 1)
    # cumulative counts by a scan (XLA's CPU cumsum is several times slower): [k-1] -> (#c <= r_k, #c < r_k)
    cum = lax.scan(lambda acc, h: (acc + h, acc + h), jnp.zeros((2,), jnp.int32), hist)[1]
    le_at, lt_at = cum[:, 0], cum[:, 1]
    zero = jnp.zeros((1,), ref_le.dtype)
    ref_counts = jnp.concatenate([zero, ref_le])
    return Grid(
        ref_counts,
        jnp.concatenate([zero, le_at[:n]]),
        ref_counts,
        jnp.concatenate([lt_at[:n], jnp.full((1,), m, lt_at.dtype)]),
        None,
        None,
        n,
        m,
    )


def make_grid(candidate: jax.Array, ref_sorted: jax.Array, kind: str = "auto") -> Grid:
    """Grid for a ``(m,)`` candidate against a sorted ``(n,)`` reference.

    ``kind``: ``"candidate"`` (sort the candidate, search the reference: best when ``n >> m``), ``"reference"`` (no
    sort, ``O(n)`` per candidate: best when ``n`` is comparable to ``m``; XLA's CPU sort is slow), ``"pooled"``
    (the spec's formulation, for tests) or ``"auto"`` (``"reference"`` when ``n <= 4 m``).
    """
    if kind == "auto":
        kind = "reference" if ref_sorted.shape[0] <= 4 * candidate.shape[0] else "candidate"
    build = {"candidate": _candidate_grid, "reference": _reference_grid, "pooled": _pooled_grid}[kind]
    return build(candidate, ref_sorted)


def _frac(count: jax.Array, total: int, dtype) -> jax.Array:
    return count.astype(dtype) / jnp.asarray(total, dtype)


def _hi_lo(grid: Grid, L: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    hi = _frac(grid.ref_hi, grid.n, dtype) - L * _frac(grid.cand_hi, grid.m, dtype)
    lo = _frac(grid.ref_lo, grid.n, dtype) - L * _frac(grid.cand_lo, grid.m, dtype)
    return hi, lo


def _max_rise(grid: Grid, hi: jax.Array, lo: jax.Array):
    """``max_{j < i} hi_i - lo_j`` over valid pairs, with its maximising ``(i, j)``, in one sequential pass.

    A ``lax.scan`` rather than ``cummin`` + ``argmax``: XLA's CPU cumulative reductions are ~10x slower than a
    scan, and under ``vmap`` the scan runs over the grid with all candidates in each step's vector.
    Returns ``(-inf, 0, 0)`` when no valid pair exists.
    """
    hi_ok = jnp.ones(hi.shape, bool) if grid.hi_ok is None else grid.hi_ok
    lo_ok = jnp.ones(lo.shape, bool) if grid.lo_ok is None else grid.lo_ok
    hi = jnp.where(hi_ok, hi, -jnp.inf)
    lo = jnp.where(lo_ok, lo, jnp.inf)
    idx = jnp.arange(hi.shape[0], dtype=jnp.int32)

    def step(carry, x):
        low, j_low, best, bi, bj = carry
        h, l, k = x
        rise = h - low
        better = rise > best
        best, bi, bj = jnp.where(better, rise, best), jnp.where(better, k, bi), jnp.where(better, j_low, bj)
        lower = l < low
        return (jnp.where(lower, l, low), jnp.where(lower, k, j_low), best, bi, bj), None

    zero = jnp.zeros((), jnp.int32)
    init = (jnp.asarray(jnp.inf, hi.dtype), zero, jnp.asarray(-jnp.inf, hi.dtype), zero, zero)
    (_, _, best, bi, bj), _ = lax.scan(step, init, (hi, lo, idx))
    return best, bi, bj


def trimmed_distance(grid: Grid, L: jax.Array, dtype) -> jax.Array:
    """``d_alpha`` at ``L = 1/(1 - alpha)`` (scalar)."""
    hi, lo = _hi_lo(grid, L, dtype)
    right = _frac(grid.n - grid.ref_lo, grid.n, dtype) - L * _frac(grid.m - grid.cand_lo, grid.m, dtype)
    rise = _max_rise(grid, hi, lo)[0]
    return jnp.maximum(jnp.maximum(jnp.max(hi), jnp.max(right)), jnp.maximum(rise / 2, 0))


class Solution(NamedTuple):
    """Exact alpha-hat for one candidate: ``alpha`` in [0, 1] (1 = no trimming suffices), ``L = 1/(1 - alpha)``,
    Newton steps taken, and whether the loop stopped by convergence (not by the iteration cap)."""

    alpha: jax.Array
    L: jax.Array
    steps: jax.Array
    converged: jax.Array


def solve_alpha_hat(grid: Grid, delta: jax.Array, dtype, max_iter: int | None = None) -> Solution:
    """Smallest ``alpha`` with ``d_alpha <= delta``.

    Every constraint reads ``c - L b <= t``. Rays (``t = delta``) give ``L_ray = max(1, max_{b>0} (c - t)/b)`` in
    closed form; the interval constraints (``t = 2 delta``) are handled by Newton/Dinkelbach on the convex,
    decreasing, piecewise-linear ``phi(L) = max_{j<i} (c_ij - L b_ij) - 2 delta``: from ``L_ray``, while
    ``phi(L) > 0`` jump to the root of the maximising line. ``L`` increases strictly and each slope ``b`` (a multiple
    of ``1/m``) is visited at most once, so at most ``m + 1`` steps are taken (typically a handful). A constraint
    with ``b = 0`` and ``c > t`` cannot be met by any trimming: ``alpha = 1``.
    """
    delta = jnp.asarray(delta, dtype)
    one = jnp.asarray(1.0, dtype)
    eps = jnp.finfo(dtype).eps
    n, m = grid.n, grid.m
    if max_iter is None:
        max_iter = m + 2
    # rays: left (F0(g-), F(g-)) and right (1 - F0(g), 1 - F(g))
    c_ray = jnp.concatenate([_frac(grid.ref_hi, n, dtype), _frac(n - grid.ref_lo, n, dtype)])
    b_cnt = jnp.concatenate([grid.cand_hi, m - grid.cand_lo])
    b_ray = _frac(b_cnt, m, dtype)
    ray_infeasible = jnp.any((b_cnt == 0) & (c_ray > delta))
    ratio = jnp.where(b_cnt > 0, (c_ray - delta) / jnp.where(b_cnt > 0, b_ray, one), -jnp.inf)
    L0 = jnp.maximum(one, jnp.max(ratio))

    def cond(state):
        _, it, done, _ = state
        return (~done) & (it < max_iter)

    def body(state):
        L, it, _, _ = state
        rise, i, j = _max_rise(grid, *_hi_lo(grid, L, dtype))
        phi = rise - 2 * delta
        slope_cnt = grid.cand_hi[i] - grid.cand_lo[j]
        c = _frac(grid.ref_hi[i] - grid.ref_lo[j], n, dtype)
        b = _frac(slope_cnt, m, dtype)
        tol = 8 * eps * jnp.maximum(one, L)
        ok = phi <= tol
        stuck = slope_cnt <= 0
        L_new = jnp.where(ok | stuck, L, (c - 2 * delta) / jnp.where(stuck, one, b))
        no_progress = L_new <= L * (1 + 4 * eps)
        infeasible = (~ok) & stuck
        done = ok | stuck | no_progress
        return jnp.maximum(L, L_new), it + 1, done, infeasible

    init = (L0, jnp.asarray(0, jnp.int32), ray_infeasible, ray_infeasible)
    L, steps, done, infeasible = lax.while_loop(cond, body, init)
    alpha = jnp.where(infeasible, one, 1 - 1 / L)
    return Solution(alpha, jnp.where(infeasible, jnp.inf, L), steps, done)
