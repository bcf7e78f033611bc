"""Benchmark: jaxcompare.embed PCA (full, covariance, randomized) and LDA against scikit-learn.

Times and agreement are measured in the same run. Our times exclude compilation (one warm-up call; compile time is
printed separately) and take the best of ``--repeat`` runs; scikit-learn is timed the same way.

    python benchmarks/bench_embed.py                       # 20000 x 1024, float32, k = 50
    python benchmarks/bench_embed.py --n 100000 --d 4096   # the issue's large case (~1.6 GB per float32 copy;
                                                           # use a GPU or >= 16 GB RAM, and be patient on CPU)

Agreement columns: ``ev_rel`` is the largest relative difference of the explained variances from scikit-learn's
exact ("full") PCA, for ours and for the scikit-learn solver of the same kind, ``1-|cos|`` the
largest angle defect between matched leading components (the top 10; trailing ones can be nearly degenerate) or
between the LDA directions, ``pred`` the share of equal LDA predictions.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def _best(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return min(times), out


def _data(n, d, seed, dtype):
    """Embedding-like data: decaying spectrum, large common offset, two sources differing along a few directions."""
    rng = np.random.default_rng(seed)
    r = min(d, 256)
    basis = np.linalg.qr(rng.normal(size=(d, r)))[0]
    scales = 3.0 * (np.arange(1, r + 1) ** -0.7)
    X = (rng.normal(size=(n, r)) * scales) @ basis.T + 0.3 * rng.normal(size=(n, d))
    y = (np.arange(n) % 2).astype(np.int32)
    shift = rng.normal(size=d) * 0.05
    X = X + 2.0 + y[:, None] * shift[None, :]
    return X.astype(dtype), y


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--skip-full", action="store_true", help="skip the exact SVD (slow for large inputs)")
    args = ap.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from jaxcompare import embed

    X, y = _data(args.n, args.d, 0, args.dtype)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    k = args.k
    print(f"device: {jax.devices()[0].platform}, X: {args.n} x {args.d} {args.dtype}, k = {k}")
    rows = []

    t_ref, ref = _best(lambda: PCA(k, svd_solver="full").fit(X), 1 if args.skip_full else args.repeat)
    ref_ev, ref_comp = ref.explained_variance_, ref.components_
    for method, sk_solver in [("full", "full"), ("covariance", "covariance_eigh"), ("randomized", "randomized")]:
        if method == "full" and args.skip_full:
            continue
        t = embed.pca(jax.random.key(0), k, method=method)
        t0 = time.perf_counter()
        jax.block_until_ready(t.fit(Xj))
        compile_s = time.perf_counter() - t0
        ours_s, st = _best(lambda: t.fit(Xj), args.repeat)  # noqa: B023
        if sk_solver == "full":
            sk_s, sk_ev = t_ref, ref_ev
        else:
            kw = {"random_state": 0} if sk_solver == "randomized" else {}
            sk_s, skm = _best(lambda: PCA(k, svd_solver=sk_solver, **kw).fit(X), args.repeat)  # noqa: B023
            sk_ev = skm.explained_variance_
        ev = np.asarray(st.explained_variance, np.float64)
        ev_rel = np.max(np.abs(ev - ref_ev) / ref_ev)
        sk_rel = np.max(np.abs(sk_ev - ref_ev) / ref_ev)
        top = min(10, k)
        cos = np.abs(np.sum(np.asarray(st.components, np.float64)[:top] * ref_comp[:top], axis=1))
        row = (f"pca {method}", ours_s, compile_s, f"sklearn {sk_solver}", sk_s, ev_rel, sk_rel, 1 - cos.min(), "")
        rows.append(row)

    t = embed.lda()
    t0 = time.perf_counter()
    jax.block_until_ready(t.fit(Xj, yj))
    compile_s = time.perf_counter() - t0
    ours_s, st = _best(lambda: t.fit(Xj, yj), args.repeat)
    sk_s, sk = _best(lambda: LinearDiscriminantAnalysis(solver="svd").fit(X, y), args.repeat)
    v = np.asarray(st.scalings, np.float64)[:, 0]
    w = sk.scalings_[:, 0]
    cos = abs(v @ w) / (np.linalg.norm(v) * np.linalg.norm(w))
    from jaxcompare.embed._lda import _predict_lda

    agree = np.mean(np.asarray(_predict_lda(st, Xj)) == sk.predict(X))
    rows.append(("lda", ours_s, compile_s, "sklearn svd", sk_s, float("nan"), float("nan"), 1 - cos, f"{agree:.4f}"))

    print(
        "| ours | time (s) | compile (s) | scikit-learn | time (s) | speed-up | ev_rel ours | ev_rel sklearn "
        "| 1-\\|cos\\| | pred |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, o, c, skn, s, ev, skev, ang, pred in rows:
        evs = "" if np.isnan(ev) else f"{ev:.1e}"
        skevs = "" if np.isnan(skev) else f"{skev:.1e}"
        print(f"| {name} | {o:.3f} | {c:.2f} | {skn} | {s:.3f} | {s / o:.2f}x | {evs} | {skevs} | {ang:.1e} | {pred} |")


if __name__ == "__main__":
    main()
