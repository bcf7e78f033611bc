"""Benchmark: S seeds × T full-batch GD steps of the linear-width two-layer model with spectra every R steps.

The JAX program (``jaxcompare.lwr.train`` vmapped over seeds: one jitted ``lax.scan``) is timed against a plain
NumPy loop doing the same computation in the same dtype (float32 by default) and the same algorithmic choices
(eigenvalues-only LAPACK for the kernels, the h×h route for the CK when h < n, a full eigh of WᵀW/h for the
alignments), started from the same data and initializations; the final spectra of both are compared.

    python benchmarks/bench_lwr.py                    # (n, d, h) = (2000, 1000, 1500), 8 seeds, 150 steps, every 10
    python benchmarks/bench_lwr.py --quick            # (500, 250, 375), 2 seeds: a one-minute smoke run
    python benchmarks/bench_lwr.py --numpy-seeds 2    # time NumPy on 2 seeds and scale linearly (seeds independent)
    python benchmarks/bench_lwr.py --numpy-dtype float64  # the NumPy loop in NumPy's default dtype instead
    python benchmarks/bench_lwr.py --theorems         # reproduce the measured numbers of shared/spec/lwr.md
    python benchmarks/bench_lwr.py --adam 8000        # Adam (lr 3e-2, batch 32) trajectories at the spec's size
    python benchmarks/bench_lwr.py --breakdown        # one seed: cost of a step and of a record on both sides,
                                                      # and the floor (steps' matmuls + LAPACK) for this workload
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompare import lwr


def numpy_train(W, v, X, y, B, lr, steps, every):
    """Plain NumPy reference: the same GD and the same recorded quantities as lwr.train (W only, tanh)."""
    n, d = X.shape
    h = W.shape[0]
    W0 = W.copy()
    sq_d, sq_h = np.float32(np.sqrt(d)), np.float32(np.sqrt(h))

    def kernels(W):
        U = X @ W.T / sq_d
        F = np.tanh(U)
        Fp = (1 - F * F) * v
        ck = F @ F.T / h
        ntk = (X @ X.T / d) * (Fp @ Fp.T / h) + ck
        return F, ck, ntk

    _, ck0, ntk0 = kernels(W0)
    recs = []

    def record(W):
        F, ck, ntk = kernels(W)
        ew, vw = np.linalg.eigh(W.T @ W / h)
        e_ck = np.linalg.eigvalsh(F.T @ F / h) if h < n else np.linalg.eigvalsh(ck)
        e_ntk = np.linalg.eigvalsh(ntk)
        r = y - F @ v / sq_h
        recs.append(
            dict(
                eig_weights=ew[::-1],
                eig_ck=e_ck[::-1],
                eig_ntk=e_ntk[::-1],
                align=np.abs(vw[:, ::-1][:, :3].T @ B.T),
                dW=np.linalg.norm(W - W0) / sq_d,
                dck=np.linalg.norm(ck - ck0),
                dntk=np.linalg.norm(ntk - ntk0),
                loss=0.5 * np.mean(r * r),
            )
        )

    record(W)
    for t in range(1, steps + 1):
        U = X @ W.T / sq_d
        F = np.tanh(U)
        r = y - F @ v / sq_h
        G = ((r[:, None] * (1 - F * F)) * v).T @ X / (n * sq_d * sq_h)
        W = W + np.float32(lr) * G
        if t % every == 0 or t == steps:
            record(W)
    return W, recs


def _best(fn, repeat=2):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def breakdown(a, cfg, lr):
    """Per seed: time of one GD step and of one record (spectra) in JAX and in NumPy, from differences of runs with
    more steps / more records; the part of a record spent in LAPACK; the floor = steps × (the step's two matrix
    products at the measured float32 matmul peak) + records × LAPACK, which bounds any implementation's speed-up
    over the NumPy loop (kernel formation and everything else counted as free)."""
    import scipy.linalg

    data = lwr.sample_data(jax.random.key(0), cfg)
    p = lwr.init_params(jax.random.key(1), cfg)
    key = jax.random.key(2)

    def jx(steps, every, spectra=True):
        return lambda: lwr.train(
            key, p, data, cfg, lr=lr, steps=steps, record_every=every, spectra=spectra, progress_bar=False
        )  # one program, as timed in the main benchmark

    step_jax = (_best(jx(120, None, False)) - _best(jx(20, None, False))) / 100
    rec_jax = (_best(jx(20, 2)) - _best(jx(20, None))) / 9
    W, v, X, y = (np.asarray(t) for t in (p.W, p.v, data.X, data.y))
    B = np.asarray(data.beta)[None, :]

    def npy(steps, every):
        return lambda: numpy_train(W, v, X, y, B, lr, steps, every)

    t10, t40 = _best(npy(10, 10), 1), _best(npy(40, 40), 1)
    step_np = (t40 - t10) / 30
    rec_np = (_best(npy(40, 10), 1) - t40) / 3
    K = lwr.kernels(p, data.X)
    F = np.tanh(X @ W.T / np.sqrt(cfg.d)).astype(np.float32)
    ck_small = F.T @ F / cfg.h if cfg.h < cfg.n else np.asarray(K.ck)
    ntk, sig = np.asarray(K.ntk), np.asarray(K.weights)
    lapack = (
        _best(lambda: scipy.linalg.eigh(ntk, eigvals_only=True, driver="evd", check_finite=False))
        + _best(lambda: scipy.linalg.eigh(ck_small, eigvals_only=True, driver="evd", check_finite=False))
        + _best(lambda: scipy.linalg.eigh(sig, driver="evd", check_finite=False))
    )
    sq = jax.random.normal(jax.random.key(3), (4096, 4096), jnp.float32)
    mm = jax.jit(lambda m: m @ m)
    peak = 2 * 4096**3 / _best(lambda: mm(sq), 5)
    step_mm = 2 * (2 * cfg.n * cfg.d * cfg.h) / peak  # X Wᵀ and the gradient product, at the matmul peak
    n_rec = -(-a.steps // a.every) + 1
    per_seed_np = a.steps * step_np + n_rec * rec_np
    floor = a.steps * step_mm + n_rec * lapack
    print(f"# per seed, (n, d, h) = ({cfg.n}, {cfg.d}, {cfg.h}), {a.steps} steps, {n_rec} records, float32")
    print(
        f"GD step: JAX {step_jax:.4f} s, NumPy {step_np:.4f} s; its two matrix products at the matmul peak "
        f"({peak / 1e9:.0f} GFLOP/s): {step_mm:.4f} s"
    )
    print(f"record:  JAX {rec_jax:.3f} s, NumPy {rec_np:.3f} s; LAPACK part (NTK, CK, Σ eigensolvers): {lapack:.3f} s")
    print(
        f"per seed: JAX ≈ {a.steps * step_jax + n_rec * rec_jax:.1f} s, NumPy ≈ {per_seed_np:.1f} s, "
        f"floor ≈ {floor:.1f} s → any implementation ≤ {per_seed_np / floor:.1f}× the NumPy loop"
    )


def theorems(sizes=(500, 1000, 2000)):
    """The spec's measured numbers, recomputed at the spec's sizes (a few minutes on 2 cores)."""
    t0 = time.perf_counter()
    print(
        "## init spectra: max_z |m_n(z) − m(z)| at Im z = 0.1 (spec Σ 3.2e-2/1.9e-2/7.9e-3, CK 2.9e-2/1.1e-2/5.6e-3,"
        " NTK 0.12/0.076/0.032)"
    )
    for n in sizes:
        c = lwr.check_init_spectra(jax.random.key(0), lwr.LWRConfig(n=n, d=n // 2, h=3 * n // 4))
        print(f"n = {n}: Σ {c.weights:.2e}  CK {c.ck:.2e}  NTK {c.ntk:.2e}")
    n = sizes[-1]
    c = first = lwr.check_spike(jax.random.key(0), lwr.LWRConfig(n=n, d=n // 2, h=3 * n // 4))
    print(
        f"## T3 one GD step, n = {n} (spec: top 3.28/6.09/22.9/95.2, BBP 3.41/6.47/20.4/76.3; align "
        "0.07/0.46/0.44/0.43, BBP 0.26/0.42/0.45/0.46)"
    )
    for r, m, p, q, al, ap in zip(c.lr_over_n, c.top_eig, c.top_eig_bbp, c.top_eig_naive, c.align, c.align_bbp):
        print(
            f"η/n = {r:g}: top {m:.2f} (BBP {p:.2f}; push taken independent of W₀: {q:.2f})  "
            f"|<u1, β>| {al:.2f} (BBP {ap:.2f})"
        )
    for m in (400, n):
        dev, dal = [], []
        for seed in range(4):  # η/n = 1/2/4/8 (the default); seed 0 at n was computed above
            c = (
                first
                if (m, seed) == (n, 0)
                else lwr.check_spike(jax.random.key(seed), lwr.LWRConfig(n=m, d=m // 2, h=3 * m // 4))
            )
            dev.append(np.max(np.abs(c.top_eig[1:] / c.top_eig_bbp[1:] - 1)))
            dal.append(np.max(np.abs(c.align[1:] - c.align_bbp[1:])))
        print(
            f"T3 over seeds 0–3, n = {m}, η/n = 2/4/8: max |measured/BBP − 1| = {max(dev):.3f}, "
            f"max |align − BBP| = {max(dal):.3f}"
        )
    c = lwr.check_early_phase(jax.random.key(0), ns=(250,) + tuple(sizes))
    print("## T1 early phase, η = 1, t = 10 (spec: n × norm ≈ 15–20, slope ≈ −1)")
    print("n × norms:", np.round(c.norms * np.asarray(c.ns)[:, None], 1).tolist(), " slopes:", np.round(c.slopes, 2))
    c = lwr.check_bulk_invariance(jax.random.key(0), ns=sizes, steps=150, record_every=150)
    print("## T2 GD η = 0.2n, 150 steps (spec: norms ≈ 3.7; Stieltjes change 0.047 → 0.020 → 0.0074; no outlier)")
    print(
        "max norms:",
        np.round(np.asarray(c.max_norms, float), 2).tolist(),
        " Stieltjes change:",
        np.round(c.stieltjes_change, 4),
        " top eig final:",
        np.round(c.top_final, 2),
        f" MP edge {c.mp_edge:.2f}",
    )
    ch = [c.stieltjes_change] + [
        lwr.check_bulk_invariance(jax.random.key(s), ns=sizes, steps=150, record_every=150).stieltjes_change
        for s in (1, 2, 3)
    ]
    lo, hi = np.min(ch, axis=0), np.max(ch, axis=0)
    print("T2 Stieltjes change over seeds 0–3:", " / ".join(f"{a:.4f}–{b:.4f}" for a, b in zip(lo, hi)))
    print(f"({time.perf_counter() - t0:.0f} s)")


def adam(steps, every=500, sizes=(2000, 1000, 1500)):
    """Adam (lr 3e-2, batch 32) at the spec's size, W only and with v trained too: top eigenvalues of Σ and the number
    above 1.1× the initial maximum along training (the spec does not state its number of steps)."""
    n, d, h = sizes
    for train_v in (False, True):
        cfg = lwr.LWRConfig(n=n, d=d, h=h, train_v=train_v)
        data = lwr.sample_data(jax.random.key(0), cfg)
        p = lwr.init_params(jax.random.key(1), cfg)
        t0 = time.perf_counter()
        H = lwr.train(
            jax.random.key(2), p, data, cfg, optimizer="adam", lr=3e-2, batch_size=32, steps=steps, record_every=every
        ).history
        e0 = np.asarray(H.eig_weights[0])
        print(
            f"## Adam, lr 3e-2, batch 32, train_v={train_v} (spec: top [88.6, 16.4, 11.7, …], 222 above "
            f"1.1× the initial maximum)"
        )
        for i in range(len(H.step)):
            e = np.asarray(H.eig_weights[i])
            top = np.round(e[:3].astype(float), 1).tolist()
            print(
                f"step {int(H.step[i]):5d}: top {top}, above {int(np.sum(e > 1.1 * e0[0]))}, "
                f"train/test loss {float(H.train_loss[i]):.3f} / {float(H.test_loss[i]):.3f}"
            )
        print(f"({time.perf_counter() - t0:.0f} s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=1000)
    ap.add_argument("--h", type=int, default=1500)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--lr-over-n", type=float, default=0.2)
    ap.add_argument("--numpy-seeds", type=int, default=None, help="seeds run by the NumPy loop (default: all)")
    ap.add_argument(
        "--numpy-dtype",
        choices=("float32", "float64"),
        default="float32",
        help="dtype of the NumPy loop (float64 is NumPy's default; JAX stays float32)",
    )
    ap.add_argument("--quick", action="store_true", help="(500, 250, 375), 2 seeds")
    ap.add_argument("--theorems", action="store_true", help="reproduce the spec's measured numbers instead")
    ap.add_argument(
        "--adam",
        type=int,
        default=None,
        metavar="STEPS",
        help="Adam trajectories at the spec's size (W only, and with v), recorded every 500 steps",
    )
    ap.add_argument("--breakdown", action="store_true", help="per-step / per-record costs and the floor, one seed")
    a = ap.parse_args()
    if a.theorems:
        theorems()
        return
    if a.adam is not None:
        adam(a.adam, sizes=(a.n, a.d, a.h))
        return
    if a.quick:
        a.n, a.d, a.h, a.seeds = 500, 250, 375, 2
    S = a.seeds
    ns = S if a.numpy_seeds is None else min(a.numpy_seeds, S)
    cfg = lwr.LWRConfig(n=a.n, d=a.d, h=a.h)
    lr = a.lr_over_n * a.n
    if a.breakdown:
        breakdown(a, cfg, lr)
        return
    keys = jax.random.split(jax.random.key(0), S)
    data = jax.vmap(lambda k: lwr.sample_data(jax.random.fold_in(k, 0), cfg))(keys)
    params = jax.vmap(lambda k: lwr.init_params(jax.random.fold_in(k, 1), cfg))(keys)
    jax.block_until_ready((data, params))

    def run(keys, params, data):
        return jax.vmap(
            lambda k, p, dd: lwr.train(k, p, dd, cfg, lr=lr, steps=a.steps, record_every=a.every, throw=False)
        )(keys, params, data)

    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(keys, params, data).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = jax.block_until_ready(compiled(keys, params, data))
    t_jax = time.perf_counter() - t0

    t0 = time.perf_counter()
    np_out = []
    nd = np.dtype(a.numpy_dtype)
    for s in range(ns):
        np_out.append(
            numpy_train(
                *(np.asarray(t, nd) for t in (params.W[s], params.v[s], data.X[s], data.y[s])),
                np.asarray(data.beta[s], nd)[None, :],
                lr,
                a.steps,
                a.every,
            )
        )
    t_np = (time.perf_counter() - t0) * S / ns

    # agreement of the final spectra (GD over 150 steps amplifies float32 rounding a little)
    W_np, recs = np_out[0]
    err_W = float(np.max(np.abs(np.asarray(res.params.W[0]) - W_np)))
    err_ntk = float(np.max(np.abs(np.asarray(res.history.eig_ntk[0, -1]) - recs[-1]["eig_ntk"])))
    n_rec = int(res.history.step.shape[1])

    cpu = platform.processor() or platform.machine()
    print(
        f"# bench_lwr: {S} seeds × {a.steps} GD steps, (n, d, h) = ({a.n}, {a.d}, {a.h}), spectra every {a.every} "
        f"steps ({n_rec} records), float32, {os.cpu_count()} CPU cores ({cpu}), jax {jax.__version__}, "
        f"backend {jax.default_backend()}"
    )
    print()
    print("| implementation | time (s) | speedup |")
    print("| --- | ---: | ---: |")
    scaled = "" if ns == S else f", {ns} seeds timed, scaled ×{S / ns:g}"
    print(f"| NumPy loop ({a.numpy_dtype}{scaled}) | {t_np:.1f} | 1.0× |")
    print(f"| jaxcompare.lwr.train, vmapped (run) | {t_jax:.1f} | {t_np / t_jax:.1f}× |")
    print(
        f"| jaxcompare.lwr.train, vmapped (compile + run) | {t_compile + t_jax:.1f} | "
        f"{t_np / (t_compile + t_jax):.1f}× |"
    )
    print()
    print(f"max |W_jax − W_numpy| = {err_W:.2e}; max |λ_NTK jax − numpy| (final) = {err_ntk:.2e}")


if __name__ == "__main__":
    main()
