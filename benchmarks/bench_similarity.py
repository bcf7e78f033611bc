"""Kernel-similarity benchmark (issue 18 goals): bias of CKA, calibration of the permutation test, speed.

1. Bias: CKA of independent Gaussian features at N = 32, p = q = 64, 100 draws: biased (spec: ~0.67) and debiased
   (goal: |mean| <= 0.02), float64 and float32.
2. Calibration: ``cka_test`` p-values of independent data (N = 32, p = q = 64, B = 999), 200 draws: KS test against
   U(0, 1) after randomizing within the p-value grid (goal: does not reject at 0.01), debiased and biased.
3. Speed (float32): ``linear_cka`` at N = 10 000, d = 512, and against forming the two N × N Gram matrices and
   calling ``cka`` at N = 7000 (``--gram-n 10000`` for the issue's size: its process peaks at ~5 GiB, above this
   machine's 3 GiB per-run budget); ``cka_test`` (B = 999) at N = 1000 and 2000.

    python benchmarks/bench_similarity.py            # all (~1-2 min on 2 idle cores)
    python benchmarks/bench_similarity.py --quick    # smaller speed cases

No peer implementation is run: the CKA packages on PyPI (cka-pytorch, ckatorch, anatome) need PyTorch, too large to
install in a benchmark environment within the time budget; the NumPy oracle in tests/test_similarity.py is the
reference for values.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

jax.config.update("jax_enable_x64", True)

from jaxcompare.similarity import cka, cka_test, linear_cka  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def best_of(fn, repeat: int) -> tuple[float, float, object]:
    """(first call incl. compile, best of the first and ``repeat`` more calls, last result) in seconds."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    best = first
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return first, best, out


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bias(n_draws: int = 100, n: int = 32, p: int = 64) -> list[dict]:
    rows = []
    for dtype in (jnp.float64, jnp.float32):
        keys = jax.random.split(jax.random.key(0), n_draws)

        def draw(k, debiased, dtype=dtype):
            kx, ky = jax.random.split(k)
            X = jax.random.normal(kx, (n, p), dtype)
            Y = jax.random.normal(ky, (n, p), dtype)
            return linear_cka(X, Y, debiased=debiased)

        for debiased in (False, True):
            v = np.asarray(jax.jit(jax.vmap(functools.partial(draw, debiased=debiased)))(keys), np.float64)
            rows.append(
                dict(
                    dtype=jnp.dtype(dtype).name,
                    debiased=debiased,
                    mean=v.mean(),
                    sd=v.std(ddof=1),
                    se=v.std(ddof=1) / np.sqrt(n_draws),
                )
            )
    return rows


def calibration(n_draws: int = 200, n: int = 32, p: int = 64, B: int = 999) -> list[dict]:
    rows = []
    for debiased in (True, False):

        def one(k, debiased=debiased):
            kx, ky, kt = jax.random.split(k, 3)
            X = jax.random.normal(kx, (n, p))
            Y = jax.random.normal(ky, (n, p))
            r = cka_test(kt, X @ X.T, Y @ Y.T, n_permutations=B, debiased=debiased)
            return r.p_value, r.statistic, r.null_mean

        t0 = time.perf_counter()
        # lax.map in batches of 20 draws: vmap over all draws would hold 200 nulls (200·B·N² numbers) at once
        run = jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=20))
        pv, stat, null_mean = (np.asarray(a) for a in run(jax.random.split(jax.random.key(1), n_draws)))
        sec = time.perf_counter() - t0
        u = np.random.default_rng(2).uniform(size=n_draws)
        ks_rand = scipy.stats.kstest(pv - u / (B + 1), "uniform").pvalue
        ks_plain = scipy.stats.kstest(pv, "uniform").pvalue
        rows.append(
            dict(
                debiased=debiased,
                ks_randomized=ks_rand,
                ks_plain=ks_plain,
                frac_below_05=np.mean(pv <= 0.05),
                mean_stat=stat.mean(),
                mean_null_mean=null_mean.mean(),
                seconds=sec,
            )
        )
    return rows


def speed_features(n: int, d: int) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(jax.random.key(3))
    X = jax.random.normal(kx, (n, d), jnp.float32)
    Y = jnp.tanh(X[:, : d // 2] @ jax.random.normal(ky, (d // 2, d), jnp.float32) / np.sqrt(d / 2))
    return X, Y


def speed(quick: bool, gram_n: int):
    """Yields one row per case (printed as it comes)."""
    d = 256 if quick else 512
    for n in sorted({4000 if quick else 10_000, gram_n}):
        X, Y = speed_features(n, d)
        for debiased in (False, True):
            first, best, val = best_of(functools.partial(linear_cka, X, Y, debiased=debiased), 2)
            yield dict(case=f"linear_cka N={n} d={d} debiased={debiased}", first=first, best=best, value=float(val))
    n = gram_n
    # the N×N path runs in a child process so that its memory is its own (peak RSS reported)
    child = subprocess.run(
        [sys.executable, __file__, "--gram-child", str(n), str(d)], capture_output=True, text=True, check=True
    )
    for line in child.stdout.splitlines():
        yield json.loads(line)
    for n_test in (500, 1000) if quick else (1000, 2000):
        A = jax.random.normal(jax.random.key(4), (n_test, 32), jnp.float32)
        Bm = A[:, :16] @ jax.random.normal(jax.random.key(5), (16, 32), jnp.float32) + jax.random.normal(
            jax.random.key(6), (n_test, 32), jnp.float32
        )
        K, L = A @ A.T, Bm @ Bm.T
        run = functools.partial(cka_test, jax.random.key(7), K, L, n_permutations=999)
        first, best, r = best_of(run, 1)
        yield dict(
            case=f"cka_test N={n_test} B=999 debiased",
            first=first,
            best=best,
            value=float(r.statistic),
            p=float(r.p_value),
        )


def gram_child(n: int, d: int) -> None:
    """Form the two N × N Gram matrices of the speed section's features and call ``cka`` on them (JSON lines)."""
    X, Y = speed_features(n, d)
    gram = jax.jit(lambda A: jnp.matmul(A, A.T, precision=jax.lax.Precision.HIGHEST))
    t0 = time.perf_counter()
    K = jax.block_until_ready(gram(X))
    L = jax.block_until_ready(gram(Y))
    t_gram = time.perf_counter() - t0
    print(
        json.dumps(
            dict(
                case=f"form the two N×N Grams N={n} d={d} (child process)",
                first=t_gram,
                best=t_gram,
                value=float("nan"),
                rss=peak_gib(),
            )
        ),
        flush=True,
    )
    for debiased in (False, True):
        first, best, val = best_of(functools.partial(cka, K, L, debiased=debiased), 1)
        print(
            json.dumps(
                dict(
                    case=f"cka on the N×N Grams N={n} debiased={debiased} (+ Grams: {t_gram + best:.1f} s)",
                    first=first,
                    best=best,
                    value=float(val),
                    rss=peak_gib(),
                )
            ),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller speed cases")
    ap.add_argument(
        "--gram-n",
        type=int,
        default=None,
        help="N of the N×N comparison (default 7000, --quick 4000; 10000 peaks at ~5 GiB)",
    )
    ap.add_argument("--gram-child", nargs=2, type=int, metavar=("N", "D"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.gram_child:
        gram_child(*args.gram_child)
        return
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores, load {load()}")

    print("\n## 1. CKA of independent features, N = 32, p = q = 64, 100 draws (goal: debiased |mean| <= 0.02)")
    print("| dtype | estimator | mean | sd | s.e. | goal |")
    print("|---|---|---|---|---|---|")
    for r in bias():
        goal = ("met" if abs(r["mean"]) <= 0.02 else "NOT met") if r["debiased"] else "-"
        print(
            f"| {r['dtype']} | {'debiased' if r['debiased'] else 'biased'} | {r['mean']:+.4f} | {r['sd']:.4f} | "
            f"{r['se']:.4f} | {goal} |"
        )

    print(
        "\n## 2. cka_test p-values on independent data, N = 32, p = q = 64, B = 999, 200 draws "
        "(goal: KS does not reject at 0.01)"
    )
    print(
        "| estimator | KS p (randomized) | KS p (plain) | P(p <= 0.05) | mean CKA | mean null mean | seconds | goal |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in calibration():
        goal = "met" if r["ks_randomized"] > 0.01 else "NOT met"
        print(
            f"| {'debiased' if r['debiased'] else 'biased'} | {r['ks_randomized']:.3f} | {r['ks_plain']:.3f} | "
            f"{r['frac_below_05']:.3f} | {r['mean_stat']:+.4f} | {r['mean_null_mean']:+.4f} | "
            f"{r['seconds']:.1f} | {goal} |"
        )

    print(f"\n## 3. Speed (float32, load {load()})")
    print(f"peak RSS before: {peak_gib():.2f} GiB")
    print("| case | first call (s) | best (s) | value | peak RSS of its process so far (GiB) |")
    print("|---|---|---|---|---|")
    for r in speed(args.quick, args.gram_n or (4000 if args.quick else 7000)):
        extra = f", p = {r['p']:.3f}" if "p" in r else ""
        rss = r.get("rss", peak_gib())
        print(f"| {r['case']} | {r['first']:.3f} | {r['best']:.3f} | {r['value']:.4f}{extra} | {rss:.2f} |", flush=True)
    print(f"\npeak RSS {peak_gib():.2f} GiB, load {load()}")


if __name__ == "__main__":
    main()
