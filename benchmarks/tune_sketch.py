"""Sweep the structured sketch's block layout (``jaxcompare.ntk._sketch._TUNING``) on the machine at hand.

    python benchmarks/tune_sketch.py                                   # quarter-width ResNet-18, N = 256, CPU layouts
    python benchmarks/tune_sketch.py --model resnet --n 2048 --layouts 64,16,1 512,64,8 1024,128,16   # an accelerator
    python benchmarks/tune_sketch.py --model transformer --vocab 50000 --layers 1 --n 128 --k 1024 --layouts 64,16,1
    python benchmarks/tune_sketch.py --model transformer --vocab 50257 --width 768 --layers 1 --n 64 --k 1024 \
        --layouts 64,16,1                                              # a GPT-2-sized token table (38.6 M entries)
    python benchmarks/tune_sketch.py ... --per-block-tables   # the hash tables rebuilt in every block (as before)
    python benchmarks/tune_sketch.py --sums          # a norm scale's gradient: fused multiply-reduce vs pairwise adds
    python benchmarks/tune_sketch.py --factors transformer 32 2    # the factor pass alone: model, examples, classes

Each layout is ``max_block,chunk,fold``: examples per compiled call, examples whose factors are formed together, and
examples folded together. For each, ``project_gradients`` runs twice (the first call compiles) and the second call's
time per example is printed with the features' agreement with the first layout's (the layout changes only the
summation order). The device's peak memory is cumulative over the sweep (JAX cannot reset it), so it is printed
after each layout as the running maximum.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _sums() -> None:
    """The per-example gradient of an elementwise scale for 16 examples × 10 classes × (T positions, E features):
    ``jnp.sum(a * δ, axis=positions)`` (what autodiff's transpose of a broadcast multiply gives) against
    ``_sum_positions`` (pairwise adds of contiguous slices), median of 30 calls after a warm-up."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcompare.ntk._structured._factors import _sum_positions

    def ms(f, *a):
        jax.block_until_ready(f(*a))
        ts = []
        for _ in range(30):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            ts.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(ts))

    fused = jax.jit(lambda a, d: jnp.sum(a[:, None] * d, axis=2))
    pairwise = jax.jit(jax.vmap(lambda a, d: _sum_positions(d * a[None])))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  load {os.getloadavg()[0]:.1f}  (16, 10, T, E) float32")
    print(f"{'T × E':>10} {'fused ms':>9} {'pairwise ms':>12}  max |Δ|")
    for t, e in [(1024, 16), (256, 32), (64, 64), (16, 128), (64, 256)]:
        a = jax.random.normal(jax.random.key(0), (16, t, e))
        d = jax.random.normal(jax.random.key(1), (16, 10, t, e))
        diff = float(jnp.abs(fused(a, d) - pairwise(a, d)).max())
        print(f"{t:>4} × {e:<4} {ms(fused, a, d):9.2f} {ms(pairwise, a, d):12.2f}  {diff:.1e}")


def _factors(model: str, n: int, classes: int) -> None:
    """The factor pass alone (the exact engine's program: its compiler options, ``classes`` logits per pass) of a
    model of bench_ntk_models for ``n`` examples: median and best of 7 calls after a warm-up."""
    sys.path.insert(0, str(HERE))
    import bench_ntk_models as models
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcompare.ntk._structured import analyze, factors
    from jaxcompare.ntk._structured._blocks import _factor_options

    init, f, _ = models.MODELS[model]
    params = jax.tree_util.tree_map(jnp.asarray, init(0))
    x = jnp.asarray(models.inputs(model, n))
    plan = analyze(f, params, tuple(x.shape[1:]), x.dtype, embeddings=True)
    fn = jax.jit(
        lambda p, xx: factors(plan, p, xx, summed=False, classes=(0, classes)), compiler_options=_factor_options(plan)
    )
    jax.block_until_ready(fn(params, x))
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, x))
        ts.append(time.perf_counter() - t0)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  load {os.getloadavg()[0]:.1f}  {model}: factors of {n} examples × "
        f"{classes} classes: median {1e3 * float(np.median(ts)):.1f} ms, best {1e3 * min(ts):.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet_q", help="a model of bench_ntk_projection (cnn, resnet_q, resnet, ...)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--layouts", nargs="+", default=["64,16,1", "64,32,1", "64,16,4"])
    ap.add_argument("--budget", default=None, help="JAXCOMPARE_MEMORY_BUDGET (default: the package's)")
    ap.add_argument("--vocab", type=int, default=None, help="transformer: vocabulary (default 1000)")
    ap.add_argument("--layers", type=int, default=None, help="transformer: layers (default 4)")
    ap.add_argument("--width", type=int, default=None, help="transformer: model width d, MLP 4d (default 256)")
    ap.add_argument(
        "--per-block-tables",
        action="store_true",
        help="rebuild the hash tables inside every block's program (as project_gradients did before preparing them)",
    )
    ap.add_argument(
        "--float64",
        action="store_true",
        help="weights and inputs in float64: layouts then agree to rounding (~1e-15) unless one computes differently",
    )
    ap.add_argument(
        "--sums",
        action="store_true",
        help="only time a norm scale's gradient, Σ_t a_t ⊙ δ_t for 16 examples × 10 classes: autodiff's fused "
        "multiply-reduce against the pairwise adds the factors use (jaxcompare.ntk._structured._factors)",
    )
    ap.add_argument(
        "--factors",
        nargs=3,
        metavar=("MODEL", "N", "CLASSES"),
        help="only time the factor pass of a bench_ntk_models model (e.g. transformer 32 2)",
    )
    args = ap.parse_args()
    if args.factors:
        _factors(args.factors[0], int(args.factors[1]), int(args.factors[2]))
        return
    if args.sums:
        _sums()
        return
    if args.budget:
        os.environ["JAXCOMPARE_MEMORY_BUDGET"] = args.budget
    sys.path.insert(0, str(HERE))
    import bench_ntk_projection as bp
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxcompare as jc
    from jaxcompare.ntk import _sketch

    jax.config.update("jax_enable_x64", args.float64)
    models, table = bp._models()
    init, f, shape = table[args.model]
    dt = np.float64 if args.float64 else np.float32
    if args.model == "transformer":  # token inputs; optionally another vocabulary or depth
        import functools

        cfg = dict(models._TF)
        cfg.update({k: v for k, v in (("vocab", args.vocab), ("layers", args.layers)) if v is not None})
        if args.width is not None:
            cfg.update(d=args.width, ff=4 * args.width)
        init, f = (
            functools.partial(models.transformer_init, cfg=cfg),
            functools.partial(models.transformer_apply, cfg=cfg),
        )
        x = jnp.asarray(np.random.default_rng(1).integers(0, cfg["vocab"], (args.n,) + shape).astype(np.int32))
    else:
        x = jnp.asarray(np.random.default_rng(1).standard_normal((args.n,) + shape).astype(dt))
    params = jax.tree_util.tree_map(lambda v: jnp.asarray(np.asarray(v, dt)), init(0))
    if args.per_block_tables:
        _sketch.StructuredProjection.prepared = lambda self, *a, **k: self
    proj = jc.structured_projection(jax.random.key(0), args.k)
    slot = "cpu" if jax.default_backend() == "cpu" else "accelerator"
    print(
        f"{args.model} N = {args.n} K = {args.k} {np.dtype(dt).name} on {jax.devices()[0].device_kind}; layouts of "
        f"'{slot}'" + ("; hash tables rebuilt in every block" if args.per_block_tables else ""),
        flush=True,
    )
    ref = None
    for text in args.layouts:
        mb, ch, fo = (int(v) for v in text.split(","))
        _sketch._TUNING[slot] = _sketch._Tuning(max_block=mb, chunk=ch, fold=fo)
        jax.clear_caches()  # the layout is read when the features are traced: trace them again
        try:
            t0 = time.perf_counter()
            phi = jax.block_until_ready(jc.project_gradients(f, params, x, proj))
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            phi = np.asarray(jax.block_until_ready(jc.project_gradients(f, params, x, proj)))
            t = time.perf_counter() - t0
        except Exception as e:  # an out-of-memory layout says so and the sweep goes on
            print(f"  {text:>12}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        ref = phi if ref is None else ref
        err = float(np.abs(phi - ref).max() / max(np.abs(ref).max(), 1e-30))
        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        print(
            f"  {text:>12}: {t:7.2f} s ({1e3 * t / args.n:6.2f} ms/example), first call {first:6.2f} s, "
            f"max rel. diff {err:.1e}" + (f", device peak so far {peak / 2**30:.2f} GiB" if peak else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
