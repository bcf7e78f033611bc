"""``compare_models`` on real-size checkpoints: the kernel sections exact and projected, and a rerun from the cache.

    python benchmarks/bench_compare.py                  # 4 quarter-width ResNet-18s, 512 test + 512 train points
    python benchmarks/bench_compare.py --models 6 --n 1024 --kernel-points 256 --surrogate-train 512

Every configuration runs in its own subprocess (its peak RSS is its own). Each child makes ``--models``
quarter-width ResNet-18s (0.70 M parameters each, CIFAR-size inputs, 10 classes; seeds 0, 1, ...) and times one
``compare_models`` call with the α̂, similarity and surrogate sections into a fresh ``cache_dir``, then the same call
again on that cache (what a rerun after an interruption, or with other sections, costs): ``first`` and ``rerun``
seconds, and the entries read from the cache. Rows: exact trNTK kernels; the structured projection (``projection=
jc.structured_projection(key, 1024)``). ``Δ CKA`` is the largest difference between the projected and the exact
CKA matrices of the same run. The kernels are most of the first call: ``K`` models × (similarity ``n_k²`` +
surrogate ``n_s²`` + cross ``n_k n_s`` entries).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child(cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(HERE))
    import bench_ntk_models as models

    import jaxcompare as jc

    init, apply_fn, shape = models.MODELS["resnet_q"]
    params = [jax.tree_util.tree_map(jnp.asarray, init(seed)) for seed in range(cfg["models"])]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((cfg["n"],) + shape).astype(np.float32)
    xt = rng.standard_normal((cfg["n"],) + shape).astype(np.float32)
    y, yt = rng.integers(0, 10, cfg["n"]), rng.integers(0, 10, cfg["n"])
    proj = jc.structured_projection(jax.random.key(3), cfg["dim"]) if cfg["projection"] else None
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        for run in ("first", "rerun"):
            t0 = time.perf_counter()
            res = jc.compare_models(
                jax.random.key(0), apply_fn, params, x, y, x_train=xt, y_train=yt, n_boot=50,
                sections=("alpha", "similarity", "surrogate"), n_kernel_points=cfg["kernel_points"],
                n_surrogate_train=cfg["surrogate_train"], n_permutations=99, cache_dir=d, projection=proj,
                progress_bar=False,
            )  # fmt: skip
            out[run] = time.perf_counter() - t0
            out[f"{run}_read"] = res.settings["cache_read"]
            out[f"{run}_computed"] = res.settings["cache_computed"]
    out["cka"] = res.similarity["cka"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--n", type=int, default=512, help="test points (and training points)")
    ap.add_argument("--kernel-points", type=int, default=128)
    ap.add_argument("--surrogate-train", type=int, default=256)
    ap.add_argument("--dim", type=int, default=1024, help="projection dimension of the projected row")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        from _subprocess import emit

        emit(_child(json.loads(args.child)))
        return
    sys.path.insert(0, str(HERE))
    import numpy as np
    from _subprocess import child_env, run_child

    base = dict(models=args.models, n=args.n, kernel_points=args.kernel_points, surrogate_train=args.surrogate_train)
    print(
        f"compare_models: {args.models} quarter-width ResNet-18s, {args.n} test and {args.n} training points, "
        f"kernels on {args.kernel_points} test points, surrogates on {args.surrogate_train} training points "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        flush=True,
    )
    rows = {}
    for name, projection in (("exact trNTK", False), (f"structured K = {args.dim}", True)):
        cfg = dict(base, projection=projection, dim=args.dim)
        cmd = [sys.executable, __file__, "--child", json.dumps(cfg)]
        rows[name] = r = run_child(cmd, env=child_env(), timeout=args.timeout)
        if isinstance(r, str):
            print(f"  {name}: {r}", flush=True)
            continue
        cka = np.asarray(r["cka"])
        exact = rows.get("exact trNTK") if projection else None
        dcka = "" if exact is None or isinstance(exact, str) else f"{np.abs(cka - np.asarray(exact['cka'])).max():.4f}"
        print(
            f"  {name:<20} first {r['first']:7.1f} s ({r['first_computed']} entries computed)  rerun "
            f"{r['rerun']:6.1f} s ({r['rerun_read']} read, {r['rerun_computed']} computed)  "
            f"{r['first'] / r['rerun']:5.1f}x  RSS {r['rss_gib']:.2f} GiB" + (f"  Δ CKA {dcka}" if dcka else ""),
            flush=True,
        )
    ok = [r for r in rows.values() if not isinstance(r, str)]
    if len(ok) == 2:
        print(f"  exact / projected, first call: {ok[0]['first'] / ok[1]['first']:.2f}x (the kernels' own floors and "
              "ratios to the anchors: benchmarks/bench_ntk.py)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
