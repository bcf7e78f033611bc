"""Benchmark models for the NTK benchmarks, in plain JAX (no jaxcompare import), so that the same code runs on
current JAX and on the pinned old JAX of neural-tangents (benchmarks/.nt-env): MLP 784-512-512-10 and a small CNN.

Parameters are lists of dicts of float32 arrays saved to / loaded from .npz files (``save``/``load``), so both
environments compute kernels of identical parameters and inputs."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def mlp_init(seed: int, sizes=(784, 512, 512, 10)):
    """Weights only, P = 668,672 as in the spec's anchor figures (stax.Dense(b_std=0) style)."""
    rng = np.random.default_rng(seed)
    return [{"w": (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)} for a, b in zip(sizes[:-1], sizes[1:])]


def mlp_apply(params, x):
    h = x.reshape(x.shape[0], -1)
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"])
    return h @ params[-1]["w"]


_CNN = [(1, 16, 1), (16, 32, 2), (32, 32, 2)]  # (in channels, out channels, stride), 3x3 kernels, SAME padding


def cnn_init(seed: int, n_classes: int = 10):
    rng = np.random.default_rng(seed)
    params = [
        {
            "w": (rng.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci)).astype(np.float32),
            "b": (0.1 * rng.standard_normal(co)).astype(np.float32),
        }
        for ci, co, _ in _CNN
    ]
    d = 7 * 7 * 32
    params.append(
        {
            "w": (rng.standard_normal((d, n_classes)) / np.sqrt(d)).astype(np.float32),
            "b": (0.1 * rng.standard_normal(n_classes)).astype(np.float32),
        }
    )
    return params


def cnn_apply(params, x):
    h = x  # (N, 28, 28, 1)
    for layer, (_, _, s) in zip(params[:-1], _CNN):
        h = jax.lax.conv_general_dilated(h, layer["w"], (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h + layer["b"][None, None, None, :])
    h = h.reshape(h.shape[0], -1)
    return h @ params[-1]["w"] + params[-1]["b"][None, :]


_RESNET_WIDTHS = (16, 32, 64, 128)  # quarter width of ResNet-18 (64-128-256-512)


def resnet_init(seed: int, n_classes: int = 10, widths=_RESNET_WIDTHS):
    """ResNet-18 layout (3x3 stem, 4 stages of 2 basic blocks, 1x1 projection shortcuts, global average pool, dense
    head) with BatchNorm in eval mode as a per-channel affine map (scale, shift: fallback leaves of the structured
    path). Quarter width: P = 0.70 M."""
    rng = np.random.default_rng(seed)

    def conv(k, ci, co):
        return (rng.standard_normal((k, k, ci, co)) * np.sqrt(2.0 / (k * k * ci))).astype(np.float32)

    def bn(co):
        return {
            "s": (1.0 + 0.1 * rng.standard_normal(co)).astype(np.float32),
            "t": (0.1 * rng.standard_normal(co)).astype(np.float32),
        }

    params = [{"w": conv(3, 3, widths[0]), **bn(widths[0])}]
    ci = widths[0]
    for stage, co in enumerate(widths):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            layer = {"w1": conv(3, ci, co), "w2": conv(3, co, co)}
            layer.update({k + "1": v for k, v in bn(co).items()})
            layer.update({k + "2": v for k, v in bn(co).items()})
            if stride != 1 or ci != co:
                layer["wd"] = conv(1, ci, co)
                layer.update({k + "d": v for k, v in bn(co).items()})
            params.append(layer)
            ci = co
    params.append(
        {
            "w": (rng.standard_normal((ci, n_classes)) / np.sqrt(ci)).astype(np.float32),
            "b": np.zeros(n_classes, np.float32),
        }
    )
    return params


def _conv(h, w, stride):
    return jax.lax.conv_general_dilated(h, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def resnet_apply(params, x):
    def bn(h, layer, tag):
        return h * layer["s" + tag][None, None, None, :] + layer["t" + tag][None, None, None, :]

    h = jax.nn.relu(bn(_conv(x, params[0]["w"], 1), params[0], ""))
    for layer in params[1:-1]:
        stride = 2 if "wd" in layer and layer["wd"].shape[2] != layer["wd"].shape[3] else 1
        y = jax.nn.relu(bn(_conv(h, layer["w1"], stride), layer, "1"))
        y = bn(_conv(y, layer["w2"], 1), layer, "2")
        sc = bn(_conv(h, layer["wd"], stride), layer, "d") if "wd" in layer else h
        h = jax.nn.relu(y + sc)
    h = jnp.mean(h, axis=(1, 2))
    return h @ params[-1]["w"] + params[-1]["b"][None, :]


_TF = dict(vocab=1000, d=256, layers=4, heads=4, ff=1024, seq=64)  # P = 3.4 M


def transformer_init(seed: int, n_classes: int = 10, cfg=_TF):
    """Pre-LN transformer encoder (token + position embeddings, 4 layers of 4-head attention and a GELU MLP, final
    LayerNorm, mean over tokens, dense head): d = 256, sequence 64, vocabulary 1000, P = 3.4 M."""
    rng = np.random.default_rng(seed)
    d, ff = cfg["d"], cfg["ff"]

    def dense(a, b):
        return (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)

    ones, zeros = (lambda k: np.ones(k, np.float32)), (lambda k: np.zeros(k, np.float32))
    params = [
        {
            "emb": (0.5 * rng.standard_normal((cfg["vocab"], d))).astype(np.float32),
            "pos": (0.1 * rng.standard_normal((cfg["seq"], d))).astype(np.float32),
        }
    ]
    for _ in range(cfg["layers"]):
        layer = {k: dense(d, d) for k in ("wq", "wk", "wv", "wo")}
        layer.update(ln1s=ones(d), ln1b=zeros(d), ln2s=ones(d), ln2b=zeros(d))
        layer.update(w1=dense(d, ff), b1=zeros(ff), w2=dense(ff, d), b2=zeros(d))
        params.append(layer)
    params.append({"lns": ones(d), "lnb": zeros(d), "w": dense(d, n_classes), "b": zeros(n_classes)})
    return params


def _ln(h, s, b):
    m = jnp.mean(h, axis=-1, keepdims=True)
    v = jnp.mean((h - m) ** 2, axis=-1, keepdims=True)
    return (h - m) * jax.lax.rsqrt(v + 1e-5) * s + b


def transformer_apply(params, tokens, cfg=_TF):
    n, t = tokens.shape
    hd = cfg["d"] // cfg["heads"]
    h = params[0]["emb"][tokens] + params[0]["pos"][None, :t]
    for layer in params[1:-1]:
        y = _ln(h, layer["ln1s"], layer["ln1b"])
        q, k, v = ((y @ layer[w]).reshape(n, t, cfg["heads"], hd) for w in ("wq", "wk", "wv"))
        att = jax.nn.softmax(jnp.einsum("nthd,nshd->nhts", q, k) / np.sqrt(hd), axis=-1)
        h = h + jnp.einsum("nhts,nshd->nthd", att, v).reshape(n, t, -1) @ layer["wo"]
        y = _ln(h, layer["ln2s"], layer["ln2b"])
        h = h + jax.nn.gelu(y @ layer["w1"] + layer["b1"]) @ layer["w2"] + layer["b2"]
    y = jnp.mean(_ln(h, params[-1]["lns"], params[-1]["lnb"]), axis=1)
    return y @ params[-1]["w"] + params[-1]["b"]


MODELS = {
    "mlp": (mlp_init, mlp_apply, (784,)),
    "cnn": (cnn_init, cnn_apply, (28, 28, 1)),
    "resnet_q": (resnet_init, resnet_apply, (32, 32, 3)),
    "transformer": (transformer_init, transformer_apply, (_TF["seq"],)),
}


def inputs(model: str, n: int, seed: int = 1) -> np.ndarray:
    shape = MODELS[model][2]
    if model == "transformer":
        return np.random.default_rng(seed).integers(0, _TF["vocab"], (n,) + shape).astype(np.int32)
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)


def save(path, params, x) -> None:
    arrays = {"x": x}
    for i, layer in enumerate(params):
        for k, v in layer.items():
            arrays[f"p{i}_{k}"] = v
    np.savez(path, **arrays)


def load(path):
    z = np.load(path)
    n_layers = 1 + max(int(k[1:].split("_")[0]) for k in z.files if k.startswith("p"))
    params = [
        {k.split("_", 1)[1]: jnp.asarray(z[k]) for k in z.files if k.startswith(f"p{i}_")} for i in range(n_layers)
    ]
    return params, jnp.asarray(z["x"])


def gram_flops(model: str, n: int, n_classes: int = 10) -> float:
    """FLOPs of the Gram products of structured trNTK⁰ (x2 = x1): Σ_layers 2 N² (D + C·E) for dense layers and
    2 N² C·D·E (+ forming the per-example gradients, 2 N C T D E) for convolutions."""
    if model == "mlp":
        dims = [(784, 512), (512, 512), (512, 10)]
        return sum(2.0 * n * n * (d + n_classes * e) for d, e in dims)
    total = 0.0
    hw = 28
    for ci, co, s in _CNN:
        hw = -(-hw // s)
        t, d = hw * hw, 9 * ci + 1
        total += 2.0 * n * n_classes * t * d * co + 2.0 * n * n * n_classes * d * co
    return total + 2.0 * n * n * (7 * 7 * 32 + 1 + n_classes * n_classes)


def n_params(model: str) -> int:
    init = MODELS[model][0]
    return int(sum(v.size for layer in init(0) for v in layer.values()))


# ----------------------------------------------------------------------------------------------------------------
# Benchmark of projected features vs the exact kernel: one subprocess per configuration (peak RSS of that
# configuration alone), matmul peak measured in the same run, FLOP floors printed.
#
#     python benchmarks/bench_ntk_models.py                    # small CNN N = 512, quarter-width ResNet-18 N = 256
#     python benchmarks/bench_ntk_models.py --only cnn --slow  # add the slow peers (rademacher K = 4096, sparse ResNet)
#     python benchmarks/bench_ntk_models.py --only exact       # exact path: quarter ResNet-18 N = 256/1024, transformer
#     python benchmarks/bench_ntk_models.py --only exact --quick         # the same at small sizes (< 3 min)
#     python benchmarks/bench_ntk_models.py --only exact --device gpu    # sizes for one H200 (~8 min)
# ----------------------------------------------------------------------------------------------------------------
_CACHE = Path(__file__).resolve().parent / "results" / "ntk_models"  # git-ignored


def _floors(model: str, n: int, params, x) -> dict:
    """FLOPs: forward pass (XLA cost analysis), C backward passes (≈ 2 forward each), per-example layer gradients
    (2 N C T D E per structured layer, from the structured plan) and the Gram of the exact kernel (N² C P, x2 = x1)."""
    from jaxcompare.ntk._structured import analyze, factors

    f = MODELS[model][1]
    c = 10
    fp = jax.jit(f).lower(params, x[:1]).compile().cost_analysis()
    fp = fp[0] if isinstance(fp, (list, tuple)) else fp
    fwd = float(fp.get("flops", 0.0))
    plan = analyze(f, params, tuple(x.shape[1:]), x.dtype)
    a, g, _ = jax.eval_shape(lambda p, xx: factors(plan, p, xx, summed=False), params, x[:1])
    layer = sum(2.0 * c * gg.shape[2] * aa.shape[-1] * gg.shape[-1] for aa, gg in zip(a, g))
    p = sum(int(v.size) for v in jax.tree_util.tree_leaves(params))
    passes = n * fwd * (1 + 2 * c)
    return {"passes": passes, "layer_grads": n * layer, "gram": float(n) * n * c * p}


def _child(cfg: dict) -> dict:
    import resource

    import jaxcompare as jc

    model, n, method, k = cfg["model"], cfg["n"], cfg["method"], cfg.get("k")
    jnp.ones(1).block_until_ready()
    rss_jax = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # the runtime alone
    init, f, _ = MODELS[model]
    params = jax.tree_util.tree_map(jnp.asarray, init(0))
    x = jnp.asarray(inputs(model, n))
    exact_path = _CACHE / f"exact_{model}_{n}.npy"
    key = jax.random.key(cfg.get("seed", 0))
    est = None

    def run():
        nonlocal est
        if method == "exact":
            kfn = jc.trace_ntk(f, implementation=cfg.get("impl", "auto"))
            if cfg.get("block"):
                kfn = jc.batched(kfn, cfg["block"], progress_bar=False)
            return kfn(params, x)
        if method == "structured":
            pk = jc.projected_kernel(jc.project_gradients(f, params, x, jc.structured_projection(key, k)))
            est = float(pk.mean_abs_error)
            return pk.kernel
        return jc.trace_ntk(f, projection=jc.random_projection(key, k, method))(params, x)

    t0 = time.perf_counter()
    kern = np.asarray(jax.block_until_ready(run()))
    first = time.perf_counter() - t0
    t = first
    # time a second (compiled) call when cheap; exact rows always (their floors are compared with compiled time)
    if first < cfg.get("repeat_below", 600.0 if method == "exact" else 60.0):
        t0 = time.perf_counter()
        kern = np.asarray(jax.block_until_ready(run()))
        t = time.perf_counter() - t0
    out = {
        "time": t,
        "first": first,
        "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "est": est,
    }
    if method == "exact":
        from jaxcompare.ntk._memory import kernel_bytes

        _CACHE.mkdir(parents=True, exist_ok=True)
        np.save(exact_path, kern)
        out["floors"] = _floors(model, n, params, x)
        per, fixed = kernel_bytes(f, params, x, None, 10, cfg.get("impl", "structured"), "trace")
        out["est_gib"] = (per * n + fixed) / 1024**3  # estimate of the unblocked (jitted) call
        out["rss_jax_gib"] = rss_jax
    elif exact_path.exists():
        iu = np.triu_indices(n, 1)
        out["err"] = float(np.abs(kern - np.load(exact_path))[iu].mean())
    return out


def _matmul_peak(size: int = 2048, reps: int = 5) -> float:
    a = jnp.ones((size, size), jnp.float32)
    mm = jax.jit(lambda u: u @ u)
    mm(a).block_until_ready()
    best = min(_timed(lambda: mm(a).block_until_ready()) for _ in range(reps))
    return 2.0 * size**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _exact_configs(quick: bool, device: str) -> list:
    """The exact path at scale: quarter-width ResNet-18 (default call, jacobian, batched) and the transformer."""
    r, t = "resnet_q", "transformer"
    if quick:  # < 3 min on 2 quiet cores
        return [
            dict(model=r, n=64, method="exact"),
            dict(model=r, n=64, method="exact", block=32),
            dict(model=t, n=16, method="exact"),
        ]
    if device == "gpu":  # about 8 min on one H200
        return [
            dict(model=r, n=1024, method="exact"),
            dict(model=r, n=1024, method="exact", impl="jacobian", block=256),
            dict(model=r, n=4096, method="exact", block=1024),
            dict(model=t, n=256, method="exact"),
            dict(model=t, n=1024, method="exact", block=256),
        ]
    return [
        dict(model=r, n=256, method="exact"),
        dict(model=r, n=256, method="exact", block=64),
        dict(model=t, n=64, method="exact"),
        dict(model=t, n=256, method="exact"),
        dict(model=r, n=1024, method="exact", block=128),
        dict(model=r, n=256, method="exact", impl="jacobian"),
    ]


def _configs(only: list, slow: bool, quick: bool = False, device: str = "cpu") -> list:
    out = []
    if "exact" in only:
        out += _exact_configs(quick, device)
    if "cnn" in only:
        out.append(dict(model="cnn", n=512, method="exact"))
        for k in (1024, 4096):
            out += [dict(model="cnn", n=512, method="structured", k=k), dict(model="cnn", n=512, method="sparse", k=k)]
        out.append(dict(model="cnn", n=512, method="rademacher", k=1024))
        if slow:
            out.append(dict(model="cnn", n=512, method="rademacher", k=4096))
    if "resnet_q" in only:
        out.append(dict(model="resnet_q", n=256, method="exact", block=32))
        out += [dict(model="resnet_q", n=256, method="structured", k=k) for k in (1024, 4096)]
        if slow:
            out.append(dict(model="resnet_q", n=256, method="sparse", k=1024))
    return out


def main() -> None:
    import argparse
    import json
    import os
    import subprocess
    import sys

    ap = argparse.ArgumentParser(description="projected features vs the exact trNTK (one subprocess per row)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--only", nargs="+", default=["cnn", "resnet_q"], choices=["cnn", "resnet_q", "exact"])
    ap.add_argument("--quick", action="store_true", help="small sizes of the exact group (< 3 min)")
    ap.add_argument("--rows", nargs="+", type=int, help="only these rows (0-based) of the configurations")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu: sizes for one H200 (~8 min)")
    ap.add_argument("--slow", action="store_true", help="also the slow peers (minutes each on 2 cores)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument(
        "--reuse-exact",
        action="store_true",
        help="skip the exact rows whose kernel is cached in benchmarks/results/ntk_models",
    )
    ap.add_argument("--budget", default="2G", help="JAXCOMPARE_MEMORY_BUDGET of the children (default 2G)")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(json.loads(args.child))), flush=True)
        return
    peak = _matmul_peak()
    print(f"matmul peak (float32, 2048², this run): {peak / 1e9:.0f} GFLOP/s; load {os.getloadavg()}", flush=True)
    print(
        f"{'model':9} {'N':>4} {'method':11} {'K':>5} {'time s':>8} {'1st s':>7} {'RSS GiB':>7} {'mean|Δcos|':>10} "
        f"{'est.':>7} {'load':>5} {'× exact':>7} {'× floor':>7}",
        flush=True,
    )
    exact_t, floors = {}, {}
    configs = _configs(args.only, args.slow, args.quick, args.device)
    for cfg in [configs[i] for i in args.rows] if args.rows else configs:
        if args.reuse_exact and cfg["method"] == "exact" and (_CACHE / f"exact_{cfg['model']}_{cfg['n']}.npy").exists():
            continue
        load = os.getloadavg()[0]
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(cfg)],
                capture_output=True,
                text=True,
                timeout=args.timeout,
                env={
                    **os.environ,
                    "JAXCOMPARE_PROGRESS": "0",
                    "JAXCOMPARE_MEMORY_BUDGET": args.budget,
                    "JAX_PLATFORMS": "cuda" if args.device == "gpu" else "cpu",
                },
            )
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(f"{cfg}: failed\n{proc.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(line[0][7:])
        except subprocess.TimeoutExpired:
            print(f"{cfg}: over {args.timeout:.0f} s", flush=True)
            continue
        m = (cfg["model"], cfg["n"])
        if cfg["method"] == "exact":
            fl = r["floors"]
            if m not in exact_t or not (cfg.get("block") or cfg.get("impl")):  # "× exact": the default call
                exact_t[m] = r["time"]
            floors[m] = {
                "exact": (fl["passes"] + fl["layer_grads"] + fl["gram"]) / peak,
                "proj": (fl["passes"] + fl["layer_grads"]) / peak,
            }
            print(
                f"  floors {m}: passes {fl['passes']:.2e}, layer gradients {fl['layer_grads']:.2e}, Gram "
                f"{fl['gram']:.2e} FLOPs -> exact {floors[m]['exact']:.2f} s, projected {floors[m]['proj']:.2f} s "
                "at the matmul peak",
                flush=True,
            )
        fl = floors.get(m, {}).get("exact" if cfg["method"] == "exact" else "proj")
        name = cfg.get("impl", cfg["method"]) + (f"/b{cfg['block']}" if cfg.get("block") else "")
        if "est_gib" in r:
            print(
                f"  memory {m}: runtime alone {r['rss_jax_gib']:.2f} GiB, estimate of the unblocked call "
                f"{r['est_gib']:.2f} GiB (budget {args.budget})",
                flush=True,
            )
        print(
            f"{cfg['model']:9} {cfg['n']:>4} {name:11} {cfg.get('k') or '':>5} {r['time']:8.2f} {r['first']:7.2f} "
            f"{r['rss_gib']:7.2f} {r.get('err', float('nan')):10.4f} "
            f"{r['est'] if r['est'] is not None else float('nan'):7.4f} {load:5.1f} "
            f"{r['time'] / exact_t[m] if m in exact_t else float('nan'):7.2f} "
            f"{r['time'] / fl if fl else float('nan'):7.2f}",
            flush=True,
        )
    print(f"matmul peak at the end: {_matmul_peak() / 1e9:.0f} GFLOP/s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
