"""Benchmark: trNTK⁰ (x2 = x1, float32) of an MLP 784-512-512-10 and a small CNN with jaxcompare's implementations
("structured", "jacobian", "ntvp") and the naive ``vmap(jacrev)`` + einsum, on current JAX.

Every configuration runs in its own subprocess (so its peak RSS is its own): jit, one warm-up call (compile time
reported), best of ``--repeat``. Configurations that would take far too long or need far too much memory are
printed as "skipped (estimated ...)", never dropped. The machine's float32 matmul peak is measured in the same run
and the structured implementation's Gram-product throughput is reported as a fraction of it. Agreement: max |K -
K_structured| / max |K_structured| in the same run.

    python benchmarks/bench_ntk.py                         # MLP N = 256/1024/4096, CNN N = 256/1024
    python benchmarks/bench_ntk.py --big                   # + structured at N = 16384 in 4096-blocks (peak RSS)
    python benchmarks/bench_ntk_anchor.py                  # neural-tangents 0.6.5 in its own pinned environment

Issue-2 table (time and peak memory of trace_ntk per implementation) and issue-5 goals (>= 60% of matmul peak
where Gram products dominate; N = 16384 within 8 GiB) are read off this output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_ntk_models as models  # noqa: E402

# memory (bytes) and FLOP limits above which a configuration is skipped with its estimate
MAX_BYTES = 8 * 2**30
MAX_FLOPS = 5e12


def estimate(model: str, impl: str, n: int, c: int = 10) -> tuple[float, float]:
    """(bytes, FLOPs) rough estimates: Jacobians N·C·P floats and 2·N²·C·P FLOPs; NTK-vector products
    ≈ 3·N²·C·(2P·positions) FLOPs; structured: the Gram products."""
    p = models.n_params(model)
    fp = 2.0 * p * (1 if model == "mlp" else 60)  # forward FLOPs per example (CNN: weights reused ~60x on average)
    if impl in ("jacobian", "naive"):
        return 4.0 * n * c * p * 1.5, 2.0 * n * n * c * p + 3 * n * c * fp
    if impl == "ntvp":
        return 4.0 * c * p * 8, 3.0 * n * n * c * fp
    return 4.0 * n * n * 4 + 4.0 * n * c * 1100 * 2, models.gram_flops(model, n, c)


def computed_gram_flops(model: str, n: int) -> float:
    """Gram FLOPs the structured implementation performs with x2 = x1: dense-layer Gram products are computed
    only for the tiles on and above the diagonal (nb row blocks -> nb(nb+1)/2 of nb² tiles)."""
    from jaxcompare.ntk._structured import _contract as _structured

    nb = max(1, min(_structured._SYM_MAX_BLOCKS, n // _structured._SYM_TILE))
    return models.gram_flops(model, n) * (nb + 1) / (2 * nb)


def child(args) -> None:
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxcompare as jc

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    params, x = models.load(args.npz)
    if args.x64:
        params, x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x))
    apply_fn = models.MODELS[args.model][1]
    if args.impl == "matmul":
        a = jax.random.normal(jax.random.key(0), (4096, 4096), jnp.float32)
        mm = jax.jit(lambda a: a @ a)
        mm(a).block_until_ready()
        best = 1e9
        for _ in range(args.repeat + 2):
            t0 = time.perf_counter()
            mm(a).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        print(json.dumps({"gflops": 2 * 4096**3 / best / 1e9}))
        return
    if args.impl == "naive":

        def single(p, xi):
            return apply_fn(p, xi[None])[0]

        def fn(p, xx):
            j = jax.vmap(jax.jacrev(single), in_axes=(None, 0))(p, xx)
            leaves = jax.tree_util.tree_leaves(j)
            return sum(
                jnp.einsum("icp,jcp->ij", l.reshape(l.shape[0], l.shape[1], -1), l.reshape(l.shape[0], l.shape[1], -1))
                for l in leaves
            )

        kfn = jax.jit(fn)
    elif args.impl.startswith("structured-batched"):
        bs = int(args.impl.split("batched")[1])
        kfn = jc.batched(jc.trace_ntk(apply_fn, normalize=False, implementation="structured"), bs, progress_bar=False)
    else:
        kfn = jax.jit(jc.trace_ntk(apply_fn, normalize=False, implementation=args.impl))
    t0 = time.perf_counter()
    k = kfn(params, x)
    jax.block_until_ready(k)
    first = time.perf_counter() - t0
    best = first
    for _ in range(args.repeat if not args.impl.startswith("structured-batched") else 0):
        t0 = time.perf_counter()
        k = kfn(params, x)
        jax.block_until_ready(k)
        best = min(best, time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.save:
        np.save(args.save, np.asarray(k))
    print(json.dumps({"time": best, "first": first, "rss": rss, "finite": bool(np.isfinite(np.asarray(k)).all())}))


def run_child(model, impl, n, npz, repeat, save=None, timeout=900, x64=False) -> dict:
    cmd = (
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "--model",
            model,
            "--impl",
            impl,
            "--npz",
            str(npz),
            "--repeat",
            str(repeat),
        ]
        + (["--save", str(save)] if save else [])
        + (["--x64"] if x64 else [])
    )
    env = dict(os.environ, JAXCOMPARE_PROGRESS="0")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"failed (rc {r.returncode}): {tail[0][:120]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--impl", default="structured")
    ap.add_argument("--npz", default="")
    ap.add_argument("--save", default="")
    ap.add_argument("--x64", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mlp-n", type=int, nargs="*", default=[256, 1024, 4096])
    ap.add_argument("--cnn-n", type=int, nargs="*", default=[256, 1024])
    ap.add_argument("--impls", nargs="+", default=["structured", "jacobian", "ntvp", "naive"])
    ap.add_argument("--big", action="store_true", help="also structured at N = 16384 in 4096-blocks")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="bench_ntk_"))
    models.save(tmp / "mm.npz", models.mlp_init(0), models.inputs("mlp", 2))
    peak = run_child("mlp", "matmul", 2, tmp / "mm.npz", args.repeat).get("gflops", float("nan"))
    print(
        f"float32 matmul peak (4096², best of {args.repeat + 2}): {peak:.1f} GFLOP/s; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    configs = [("mlp", n) for n in args.mlp_n] + [("cnn", n) for n in args.cnn_n]
    if args.big:
        configs.append(("mlp", 16384))
    header = (
        f"{'model':5} {'N':>6} {'implementation':22} {'time s':>9} {'compile s':>9} {'peak RSS':>9} "
        f"{'GFLOP/s':>8} {'% peak':>7} {'agree':>8}"
    )
    print(header)
    print("-" * len(header))
    for model, n in configs:
        init, _, _ = models.MODELS[model]
        npz = tmp / f"{model}_{n}.npz"
        models.save(npz, init(0), models.inputs(model, n))
        impls = ["structured-batched4096"] if n > 8192 else args.impls
        ref = None
        for impl in impls:
            mem, flops = estimate(model, impl.split("-")[0], n)
            name = impl
            if n <= 8192 and (mem > MAX_BYTES or flops > MAX_FLOPS):
                print(f"{model:5} {n:>6} {name:22} skipped (estimated {mem / 2**30:.0f} GiB, {flops:.1e} FLOPs)")
                continue
            save = tmp / f"k_{model}_{n}_{impl}.npy" if n <= 4096 else None
            r = run_child(model, impl, n, npz, args.repeat, save=save)
            if "error" in r:
                print(f"{model:5} {n:>6} {name:22} {r['error']}")
                continue
            agree = ""
            if save is not None:
                k = np.load(save)
                if ref is None:
                    ref = k
                    agree = "ref"
                else:
                    agree = f"{np.abs(k - ref).max() / np.abs(ref).max():.1e}"
            gf = computed_gram_flops(model, n) / r["time"] / 1e9 if impl == "structured" else float("nan")
            pct = f"{100 * gf / peak:6.0f}%" if gf == gf else ""
            gfs = f"{gf:8.1f}" if gf == gf else ""
            print(
                f"{model:5} {n:>6} {name:22} {r['time']:9.3f} {r['first'] - r['time']:9.1f} "
                f"{r['rss'] / 2**30:8.2f}G {gfs:>8} {pct:>7} {agree:>8}",
                flush=True,
            )
    print(
        "\nGFLOP/s: Gram-product FLOPs the structured kernel performs (bench_ntk_models.gram_flops, only the "
        "tiles on and above the diagonal) / time; forward and C backward passes are not counted. "
        "compile s = first call minus best call."
    )


if __name__ == "__main__":
    main()
