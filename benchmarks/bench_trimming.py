"""Benchmark: exact vectorised alpha-hat vs the published grid search (NumPy) and a linear program (SciPy HiGHS).

Cases (M candidates, m points each, reference of n points):
  * ``sample``: M = 200, m = n = 2000 (a reference sample the size of the candidate's);
  * ``pooled``: M = 200, m = 2000, reference pooled from 200 models on 2000 points (n = 400,000), one bootstrap
    round of the published protocol;
  * ``gpu``: M = 1000, m = n = 10,000 (run with ``--gpu``; meant for an accelerator).

Candidates are contaminated draws ``(1 - eps) N(0, 1) + eps N(3, 1)`` with ``eps`` uniform in ``[0, 0.4]``; the
threshold is the published DKW value at level 0.01. Reported: wall time (best of ``--repeat`` runs, after one
warm-up/compile run), the speed-up over the grid search, and exactness checks: ``grid_alpha(ours)`` equals the grid
search on every candidate, and ours equals the LP optimum on the candidates the LP is run on.

Usage: ``python benchmarks/bench_trimming.py [--repeat 3] [--lp 2] [--gpu] [--float32]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

GRID = (0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


# --------------------------------------------------------------------------------------------------------------
# Baselines (independent NumPy / SciPy code)
# --------------------------------------------------------------------------------------------------------------
def grid_search_numpy(cand: np.ndarray, ref_sorted: np.ndarray, delta: float) -> float:
    """The published approach: for each grid level (in increasing order) evaluate the closed-form trimmed KS
    distance on the pooled distinct values and return the first level that passes (0.5 if none does)."""
    n, m = ref_sorted.size, cand.size
    cs = np.sort(cand)
    z = np.unique(np.concatenate([cs, ref_sorted]))
    f0_left = np.searchsorted(ref_sorted, z, "left") / n
    f0 = np.searchsorted(ref_sorted, z, "right") / n
    f_left = np.searchsorted(cs, z, "left") / m
    f = np.searchsorted(cs, z, "right") / m
    for alpha in GRID:
        L = 1.0 / (1.0 - alpha)
        u = f0_left - L * f_left
        low = f0 - L * f
        a = u.max()
        b = ((1 - f0) - L * (1 - f)).max()
        c = (u[1:] - np.minimum.accumulate(low)[:-1]).max() if z.size > 1 else -np.inf
        if max(a, b, c / 2, 0.0) <= delta:
            return alpha
    return 0.5


def lp_alpha_hat(cand: np.ndarray, ref_sorted: np.ndarray, delta: float) -> float:
    """Exact alpha-hat as one sparse LP over the trimming weights ``w`` (distinct candidate values ``v_k``, masses
    ``p_k``), the trimmed eCDF ``s_i = F~(z_i)`` at the pooled values and ``L``:
    min L s.t. s_i - s_{i-1} = sum_{v_k = z_i} w_k, s_last = 1, 0 <= w_k <= L p_k, |s_i - F0(z_i)| <= delta."""
    import scipy.optimize
    import scipy.sparse as sp

    v, cnt = np.unique(cand, return_counts=True)
    p = cnt / cand.size
    z = np.unique(np.concatenate([v, ref_sorted]))
    f0 = np.searchsorted(ref_sorted, z, "right") / ref_sorted.size
    K, Z = v.size, z.size
    pos = np.searchsorted(z, v)
    # variables: [w (K), s (Z), L]
    eq_rows = np.concatenate([np.arange(Z), np.arange(1, Z), pos, [Z]])
    eq_cols = np.concatenate([K + np.arange(Z), K + np.arange(Z - 1), np.arange(K), [K + Z - 1]])
    eq_vals = np.concatenate([np.ones(Z), -np.ones(Z - 1), -np.ones(K), [1.0]])
    A_eq = sp.csr_matrix((eq_vals, (eq_rows, eq_cols)), shape=(Z + 1, K + Z + 1))
    b_eq = np.zeros(Z + 1)
    b_eq[Z] = 1.0
    A_ub = sp.hstack([sp.eye(K), sp.csr_matrix((K, Z)), sp.csr_matrix(-p[:, None])]).tocsr()
    bounds = np.concatenate(
        [
            np.column_stack([np.zeros(K), np.full(K, np.inf)]),
            np.column_stack([np.maximum(f0 - delta, 0), np.minimum(f0 + delta, 1)]),
            [[1.0, np.inf]],
        ]
    )
    c = np.zeros(K + Z + 1)
    c[-1] = 1.0
    res = scipy.optimize.linprog(c, A_ub=A_ub, b_ub=np.zeros(K), A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status == 2:
        return 1.0
    return 1.0 - 1.0 / res.x[-1]


# --------------------------------------------------------------------------------------------------------------
def make_case(M: int, m: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    eps = rng.uniform(0, 0.4, size=M)
    cands = rng.normal(size=(M, m))
    outl = rng.random((M, m)) < eps[:, None]
    cands = np.where(outl, cands + 3.0, cands)
    ref = rng.normal(size=n)
    return cands, ref


def best_of(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up (compilation for JAX)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def run_case(name: str, M: int, m: int, n: int, repeat: int, n_lp: int, float32: bool) -> dict:
    import jax
    import jax.numpy as jnp

    import jaxcompare as jc

    cands, ref = make_case(M, m, n)
    ref_sorted = np.sort(ref)
    delta = jc.ks_threshold(m, m, level=0.01)  # published: n = number of test points per half
    dtype = jnp.float32 if float32 else jnp.float64
    C, R = jnp.asarray(cands, dtype), jnp.asarray(ref, dtype)
    # reference passed as an argument (not closed over): a closed-over constant would be sorted at compile time
    ours_fn = jax.jit(jax.vmap(lambda c, r: jc.alpha_hat(c, r, threshold=delta), in_axes=(0, None)))
    t_ours, a = best_of(lambda: np.asarray(ours_fn(C, R).block_until_ready()), repeat)

    t_grid, g = best_of(lambda: np.array([grid_search_numpy(c, ref_sorted, delta) for c in cands]), max(1, repeat // 2))
    grid_ok = bool(np.all(np.asarray(jc.grid_alpha(jnp.asarray(a, jnp.float64))) == g)) if not float32 else None

    row = dict(case=name, M=M, m=m, n=n, ours_s=t_ours, grid_s=t_grid, speedup=t_grid / t_ours, grid_agrees=grid_ok)
    if n_lp > 0:
        t0 = time.perf_counter()
        lp = np.array([lp_alpha_hat(c, ref_sorted, delta) for c in cands[:n_lp]])
        t_lp = (time.perf_counter() - t0) / n_lp
        row.update(
            lp_s_per_candidate=t_lp, lp_s_extrapolated=t_lp * M, lp_max_abs_diff=float(np.max(np.abs(lp - a[:n_lp])))
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lp", type=int, default=2, help="candidates solved by the LP per case (0 = skip)")
    ap.add_argument("--gpu", action="store_true", help="add the GPU-sized case (M = 1000, m = n = 10,000)")
    ap.add_argument("--float32", action="store_true", help="run ours in float32 (grid agreement not checked)")
    ap.add_argument("--cases", default="sample,pooled")
    args = ap.parse_args()

    import jax

    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}: {jax.devices()[0].device_kind}")
    sizes = {"sample": (200, 2000, 2000), "pooled": (200, 2000, 400_000), "gpu": (1000, 10_000, 10_000)}
    cases = args.cases.split(",") + (["gpu"] if args.gpu else [])
    rows = [run_case(c, *sizes[c], args.repeat, args.lp if c != "gpu" else 0, args.float32) for c in cases]
    head = (
        "| case | M x m, n | exact alpha-hat (ours) | grid search, 13 levels (NumPy) | speed-up | "
        "LP (HiGHS), per candidate | LP for all M (extrapolated) | max abs diff vs LP | grid agrees |"
    )
    print(head)
    print("|" + "---|" * 9)
    for r in rows:
        lp = (
            (f"{r['lp_s_per_candidate']:.2f} s", f"{r['lp_s_extrapolated']:.0f} s", f"{r['lp_max_abs_diff']:.1e}")
            if "lp_s_per_candidate" in r
            else ("-", "-", "-")
        )
        print(
            f"| {r['case']} | {r['M']} x {r['m']}, {r['n']} | {r['ours_s'] * 1e3:.0f} ms | "
            f"{r['grid_s'] * 1e3:.0f} ms | "
            f"{r['speedup']:.1f}x | {lp[0]} | {lp[1]} | {lp[2]} | {r['grid_agrees']} |"
        )


if __name__ == "__main__":
    main()
