"""Benchmark models for the NTK benchmarks, in plain JAX (no jaxcompare import), so that the same code runs on
current JAX and on the pinned old JAX of neural-tangents (benchmarks/.nt-env): MLP 784-512-512-10 and a small CNN.

Parameters are lists of dicts of float32 arrays saved to / loaded from .npz files (``save``/``load``), so both
environments compute kernels of identical parameters and inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
_VIT = dict(image=32, channels=3, patch=4, d=192, layers=6, heads=3, ff=768)  # ViT-Tiny width at half depth: 2.7 M


def _encoder_init(rng, cfg):
    """Pre-LN encoder layers (attention without biases, GELU MLP with biases), shared by the transformer and the ViT."""
    d, ff = cfg["d"], cfg["ff"]

    def dense(a, b):
        return (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)

    ones, zeros = (lambda k: np.ones(k, np.float32)), (lambda k: np.zeros(k, np.float32))
    layers = []
    for _ in range(cfg["layers"]):
        layer = {k: dense(d, d) for k in ("wq", "wk", "wv", "wo")}
        layer.update(ln1s=ones(d), ln1b=zeros(d), ln2s=ones(d), ln2b=zeros(d))
        layer.update(w1=dense(d, ff), b1=zeros(ff), w2=dense(ff, d), b2=zeros(d))
        layers.append(layer)
    return layers


def _head_init(rng, d, n_classes):
    w = (rng.standard_normal((d, n_classes)) / np.sqrt(d)).astype(np.float32)
    return {"lns": np.ones(d, np.float32), "lnb": np.zeros(d, np.float32), "w": w, "b": np.zeros(n_classes, np.float32)}


def transformer_init(seed: int, n_classes: int = 10, cfg=_TF):
    """Pre-LN transformer encoder (token + position embeddings, 4 layers of 4-head attention and a GELU MLP, final
    LayerNorm, mean over tokens, dense head): d = 256, sequence 64, vocabulary 1000, P = 3.4 M."""
    rng = np.random.default_rng(seed)
    d = cfg["d"]
    params = [
        {
            "emb": (0.5 * rng.standard_normal((cfg["vocab"], d))).astype(np.float32),
            "pos": (0.1 * rng.standard_normal((cfg["seq"], d))).astype(np.float32),
        }
    ]
    return params + _encoder_init(rng, cfg) + [_head_init(rng, d, n_classes)]


def _ln(h, s, b):
    m = jnp.mean(h, axis=-1, keepdims=True)
    v = jnp.mean((h - m) ** 2, axis=-1, keepdims=True)
    return (h - m) * jax.lax.rsqrt(v + 1e-5) * s + b


def _encoder(layers, h, heads):
    n, t, d = h.shape
    hd = d // heads
    for layer in layers:
        y = _ln(h, layer["ln1s"], layer["ln1b"])
        q, k, v = ((y @ layer[w]).reshape(n, t, heads, hd) for w in ("wq", "wk", "wv"))
        att = jax.nn.softmax(jnp.einsum("nthd,nshd->nhts", q, k) / np.sqrt(hd), axis=-1)
        h = h + jnp.einsum("nhts,nshd->nthd", att, v).reshape(n, t, -1) @ layer["wo"]
        y = _ln(h, layer["ln2s"], layer["ln2b"])
        h = h + jax.nn.gelu(y @ layer["w1"] + layer["b1"]) @ layer["w2"] + layer["b2"]
    return h


def _head(head, h):
    y = jnp.mean(_ln(h, head["lns"], head["lnb"]), axis=1)
    return y @ head["w"] + head["b"]


def transformer_apply(params, tokens, cfg=_TF):
    t = tokens.shape[1]
    h = params[0]["emb"][tokens] + params[0]["pos"][None, :t]
    return _head(params[-1], _encoder(params[1:-1], h, cfg["heads"]))


def vit_init(seed: int, n_classes: int = 10, cfg=_VIT):
    """ViT for 32×32×3 images: 4×4 patches (64 tokens) embedded by a dense layer (= a stride-4 convolution), learned
    position embeddings, 6 pre-LN layers of 3-head attention (d = 192) and a GELU MLP (768), final LayerNorm, mean
    over tokens (no class token), dense head: ViT-Tiny's width at half its depth, P = 2.7 M."""
    rng = np.random.default_rng(seed)
    d, dp = cfg["d"], cfg["patch"] ** 2 * cfg["channels"]
    tokens = (cfg["image"] // cfg["patch"]) ** 2
    params = [
        {
            "wp": (rng.standard_normal((dp, d)) / np.sqrt(dp)).astype(np.float32),
            "bp": np.zeros(d, np.float32),
            "pos": (0.02 * rng.standard_normal((tokens, d))).astype(np.float32),
        }
    ]
    return params + _encoder_init(rng, cfg) + [_head_init(rng, d, n_classes)]


def vit_apply(params, x, cfg=_VIT):
    n, p, c = x.shape[0], cfg["patch"], cfg["channels"]
    g = cfg["image"] // p
    patches = x.reshape(n, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, p * p * c)
    h = patches @ params[0]["wp"] + params[0]["bp"] + params[0]["pos"][None]
    return _head(params[-1], _encoder(params[1:-1], h, cfg["heads"]))


_RESNET_FULL = (64, 128, 256, 512)  # ResNet-18's widths: P = 11.2 M


def resnet_full_init(seed: int, n_classes: int = 10):
    """Full-width ResNet-18 (64-128-256-512), the layout of :func:`resnet_init`: P = 11.2 M."""
    return resnet_init(seed, n_classes, widths=_RESNET_FULL)


MODELS = {
    "mlp": (mlp_init, mlp_apply, (784,)),
    "cnn": (cnn_init, cnn_apply, (28, 28, 1)),
    "resnet_q": (resnet_init, resnet_apply, (32, 32, 3)),
    "transformer": (transformer_init, transformer_apply, (_TF["seq"],)),
    "resnet": (resnet_full_init, resnet_apply, (32, 32, 3)),
    "vit": (vit_init, vit_apply, (_VIT["image"], _VIT["image"], _VIT["channels"])),
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
# Benchmark of the exact and projected kernels of real models: one subprocess per configuration (peak RSS of that
# configuration alone, benchmarks/_subprocess.py), matmul peak measured in the same run, FLOP floors printed, and the
# torch.func tutorial's recipe on the same weights (benchmarks/_torch_models.py, in benchmarks/.trak-env).
#
#     python benchmarks/bench_ntk_models.py                    # small CNN N = 512, quarter-width ResNet-18 N = 256
#     python benchmarks/bench_ntk_models.py --only cnn --slow  # add the slow peers (rademacher K = 4096, sparse ResNet)
#     python benchmarks/bench_ntk_models.py --only exact       # exact path: quarter ResNet-18 N = 256/1024, transformer
#     python benchmarks/bench_ntk_models.py --only exact --rows 6 --reuse-exact  # the transformer's sketch (N = 256)
#     python benchmarks/bench_ntk_models.py --only resnet vit  # full-width ResNet-18 N = 256, ViT N = 256
#     python benchmarks/bench_ntk_models.py --only torch       # every model at an N where torch.func's recipe fits
#     python benchmarks/bench_ntk_models.py --only exact --quick         # the same at small sizes (< 3 min)
#     python benchmarks/bench_ntk_models.py --only exact resnet vit torch --device gpu   # one H200 (~8 min)
#
# After the first exact row of each (model, N) the torch.func recipe runs on the same weights when its per-example
# Jacobian fits in --torch-budget, else the table says "does not fit: needs X GiB"; a summary of ours / torch.func
# closes the run.
# ----------------------------------------------------------------------------------------------------------------
_CACHE = Path(__file__).resolve().parent / "results" / "ntk_models"  # git-ignored
_GIB = 1024**3


def _floors(model: str, n: int, params, x, passes: int = 10, apply_fn=None) -> dict:
    """FLOPs: forward pass (XLA cost analysis), C backward passes (≈ 2 forward each), per-example layer gradients
    (2 N C T D E per structured layer, from the structured plan) and the Gram of the exact kernel (N² C P, x2 = x1).
    ``passes``: backward passes per example in place of the C = 10 classes (``p`` output probes, or every output of
    a model with more); ``apply_fn``: another forward pass than the model's (a per-token head)."""
    from jaxcompare.ntk._structured import analyze, factors

    f = apply_fn or MODELS[model][1]
    c = passes
    fp = jax.jit(f).lower(params, x[:1]).compile().cost_analysis()
    fp = fp[0] if isinstance(fp, (list, tuple)) else fp
    fwd = float(fp.get("flops", 0.0))
    plan = analyze(f, params, tuple(x.shape[1:]), x.dtype)
    a, g, _ = jax.eval_shape(lambda p, xx: factors(plan, p, xx, summed=False), params, x[:1])
    layer = sum(2.0 * c * gg.shape[2] * aa.shape[-1] * gg.shape[-1] for aa, gg in zip(a, g))
    if fwd < 0.5 * layer / c:  # XLA's GPU cost analysis leaves out the convolutions it hands to cuDNN (ResNet-18:
        fwd = layer / c  # 2e6 FLOPs counted for 1.1e9): the structured layers' own forward FLOPs instead
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
            kfn = jc.trace_ntk(f, implementation=cfg.get("impl", "auto"), precision=cfg.get("precision"))
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
    out = {"time": t, "first": first, "est": est, "dev_gib": device_peak_gib()}
    if method == "exact" and cfg.get("precision", "highest") != "highest":  # a faster policy: its error vs highest
        if exact_path.exists():
            iu = np.triu_indices(n, 1)
            out["err"] = float(np.abs(kern - np.load(exact_path))[iu].mean())
            out["max_err"] = float(np.abs(kern - np.load(exact_path))[iu].max())
        out["floors"] = _floors(model, n, params, x)
        out["est_gib"], out["rss_jax_gib"] = float("nan"), rss_jax
    elif method == "exact":
        from jaxcompare.ntk._memory import kernel_bytes

        _CACHE.mkdir(parents=True, exist_ok=True)
        np.save(exact_path, kern)
        out["floors"] = _floors(model, n, params, x)
        per, fixed = kernel_bytes(f, params, x, None, 10, cfg.get("impl", "structured"), "trace")
        out["est_gib"] = (per * n + fixed) / _GIB  # estimate of the unblocked (jitted) call
        out["rss_jax_gib"] = rss_jax
    else:  # a projection: its own floors (used when the run has no exact row of this model and N)
        out["floors"] = _floors(model, n, params, x)
        if exact_path.exists():
            iu = np.triu_indices(n, 1)
            out["err"] = float(np.abs(kern - np.load(exact_path))[iu].mean())
    return out


def _matmul_peak(size: int | None = None, reps: int = 5, precision: str = "highest") -> float:
    """Float32 matmul rate (FLOP/s) of the default backend at ``precision`` (the kernels' default policy is
    "highest": on a GPU, true float32 products rather than TF32), best of ``reps``; 2048² on a CPU, 8192² on an
    accelerator (a 2048² product is launch-bound there)."""
    gpu = jax.default_backend() != "cpu"
    size = size or (8192 if gpu else 2048)
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    mm = jax.jit(lambda u: jnp.matmul(u, u, precision=precision))
    mm(a).block_until_ready()
    best = min(_timed(lambda: mm(a).block_until_ready()) for _ in range(reps))
    return 2.0 * size**3 / best


def device_peak_gib() -> float | None:
    """Peak bytes the accelerator's allocator held in this process (GiB), or None on a CPU (peak RSS says it)."""
    if jax.default_backend() == "cpu":
        return None
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / _GIB


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------
# torch.func's recipe on the same weights (the child runs benchmarks/_torch_models.py under benchmarks/.trak-env)
# ----------------------------------------------------------------------------------------------------------------
def jacobian_gib(model: str, n: int, n_classes: int = 10) -> float:
    """Size of the recipe's per-example Jacobian, N·C·P float32 values, GiB."""
    return 4.0 * n * n_classes * n_params(model) / _GIB


def _torch_chunk(model: str, n: int) -> int | None:
    """vmap's chunk_size for the recipe: all examples at once (the tutorial) for the MLP and the small CNN and up to
    N = 16, else chunks of 16 (the C backward passes of all examples at once would hold N·C copies of the
    activations of a ResNet or a transformer)."""
    return None if model in ("mlp", "cnn") or n <= 16 else 16


def torch_needs_gib(model: str, n: int) -> float:
    """Memory the recipe needs at least: its Jacobian, twice when vmap is chunked (the chunks are concatenated)."""
    return jacobian_gib(model, n) * (1 if _torch_chunk(model, n) is None else 2)


def export(model: str, n: int) -> dict:
    """Weights and inputs of (model, N) as an .npz and the JAX logits of the first 8 points: the torch child's input
    (it checks its port against those logits before timing)."""
    init, f, _ = MODELS[model]
    params, x = init(0), inputs(model, n)
    _CACHE.mkdir(parents=True, exist_ok=True)
    npz, logits = _CACHE / f"{model}_{n}.npz", _CACHE / f"{model}_{n}_logits.npy"
    save(npz, params, x)
    p = jax.tree_util.tree_map(jnp.asarray, params)
    np.save(logits, np.asarray(jax.jit(f)(p, jnp.asarray(x[:8]))))
    cfg = {"npz": str(npz), "logits": str(logits), "exact": str(_CACHE / f"exact_{model}_{n}.npy")}
    if model == "vit":
        cfg.update(heads=_VIT["heads"], patch=_VIT["patch"])
    elif model == "transformer":
        cfg["heads"] = _TF["heads"]
    return cfg


def _run_torch(model: str, n: int, args, run_child) -> dict | str:
    import _peer_env

    need = torch_needs_gib(model, n)
    budget = _parse_gib(args.torch_budget)
    if need > budget:
        return f"does not fit: needs {need:.1f} GiB (per-example Jacobian N·C·P float32) > --torch-budget {budget:g}"
    import importlib.util

    if args.device == "gpu" and importlib.util.find_spec("torch") is not None:
        py = sys.executable  # an accelerator image that ships torch beside jax (it may have no network to build one)
    elif args.device == "gpu" and not (Path(_peer_env.__file__).parent / ".trak-env" / "bin" / "python").exists():
        return "no torch environment on this machine (benchmarks/.trak-env; an accelerator machine may be offline)"
    else:
        try:
            py = str(_peer_env.torch_env())
        except (OSError, subprocess.CalledProcessError) as e:
            return f"no torch environment ({type(e).__name__}: {e})"
    cfg = dict(model=model, n=n, device=args.device, chunk=_torch_chunk(model, n), **export(model, n))
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    torch_py = str(Path(__file__).resolve().parent / "_torch_models.py")
    return run_child([py, torch_py, json.dumps(cfg)], env=env, timeout=args.timeout)


def _parse_gib(text: str) -> float:
    units = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 1024.0}
    t = text.strip().upper().rstrip("IB")
    return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t) / _GIB


# ----------------------------------------------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------------------------------------------
def _exact_configs(quick: bool, device: str) -> list:
    """The exact path at scale: quarter-width ResNet-18 (default call, jacobian, batched) and the transformer (and its
    structured sketch, on CPU)."""
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
            dict(model=r, n=1024, method="exact", precision="high"),
            dict(model=r, n=4096, method="exact", block=1024, precision="high"),
            dict(model=t, n=256, method="exact"),
            dict(model=t, n=1024, method="exact", block=256, precision="high"),
        ]
    return [
        dict(model=r, n=256, method="exact"),
        dict(model=r, n=256, method="exact", block=64),
        dict(model=t, n=64, method="exact"),
        dict(model=t, n=256, method="exact"),
        dict(model=r, n=1024, method="exact", block=128),
        dict(model=r, n=256, method="exact", impl="jacobian"),
        dict(model=t, n=256, method="structured", k=1024),  # its error against row 3's kernel
    ]


def _big_configs(model: str, quick: bool, device: str) -> list:
    """Full-width ResNet-18 (11.2 M) and the ViT (2.7 M): exact in bounded memory (``batched``), the default call
    (the ViT; it plans its own blocks or raises before any work) and the structured sketch."""
    if quick:
        return [dict(model=model, n=32, method="exact", block=16), dict(model=model, n=32, method="structured", k=1024)]
    if device == "gpu":  # full-width N = 10 000 / 50 000 projected: bench_ntk_projection.py --only resnet --device gpu
        return [  # exact at two N (the linear and quadratic terms of the extrapolation), TF32 against highest
            dict(model=model, n=1024, method="exact"),
            dict(model=model, n=1024, method="exact", precision="high"),
            dict(model=model, n=4096, method="exact", block=1024, precision="high"),
        ]
    if model == "resnet":
        return [
            dict(model=model, n=256, method="exact", block=64),
            dict(model=model, n=256, method="structured", k=4096),
        ]
    return [
        dict(model=model, n=256, method="exact"),
        dict(model=model, n=256, method="exact", block=64),
        dict(model=model, n=256, method="structured", k=1024),
    ]


# (model, N) at which the recipe fits in 6 GiB on the CPU (torch_needs_gib: 0.6, 3.2, 3.3, 2.0, 1.6, 3.3 GiB) and in
# ~100 GiB of an H200
_TORCH_N = {
    "cpu": dict(cnn=256, mlp=128, resnet_q=64, transformer=16, vit=16, resnet=8),
    "gpu": dict(cnn=4096, mlp=1024, resnet_q=512, transformer=128, vit=256, resnet=64),
}


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
    for big in ("resnet", "vit"):
        if big in only:
            out += _big_configs(big, quick, device)
    if "torch" in only:
        sizes = _TORCH_N[device]
        out += [dict(model=m, n=max(4, n // 4) if quick else n, method="exact") for m, n in sizes.items()]
    return out


# ----------------------------------------------------------------------------------------------------------------
# the parent: subprocesses, the table, the summary against torch.func
# ----------------------------------------------------------------------------------------------------------------
def main() -> None:
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _subprocess

    ap = argparse.ArgumentParser(description="exact and projected trNTK of real models (one subprocess per row)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    groups = ["cnn", "resnet_q", "exact", "resnet", "vit", "torch"]
    ap.add_argument("--only", nargs="+", default=["cnn", "resnet_q"], choices=groups)
    ap.add_argument("--quick", action="store_true", help="small sizes of the exact/resnet/vit/torch groups")
    ap.add_argument("--rows", nargs="+", type=int, help="only these rows (0-based) of the configurations")
    ap.add_argument("--list", action="store_true", help="print the configurations and exit")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu: sizes for one H200 (~8 min)")
    ap.add_argument("--slow", action="store_true", help="also the slow peers (minutes each on 2 cores)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument(
        "--reuse-exact",
        action="store_true",
        help="skip the exact rows whose kernel is cached in benchmarks/results/ntk_models",
    )
    ap.add_argument("--budget", default=None, help="JAXCOMPARE_MEMORY_BUDGET of the children (default 2G; gpu 40G)")
    ap.add_argument(
        "--repeat-below",
        type=float,
        default=None,
        help="time a second (compiled) call when the first took less (default: 600 s exact rows, 60 s others)",
    )
    ap.add_argument("--no-torch", action="store_true", help="skip the torch.func recipe (no torch environment)")
    ap.add_argument("--torch-budget", default=None, help="memory the recipe may use (default 6G; gpu 100G)")
    args = ap.parse_args()
    if args.child:
        _subprocess.emit(_child(json.loads(args.child)))
        return
    gpu = args.device == "gpu"
    args.budget = args.budget or ("40G" if gpu else "2G")
    args.torch_budget = args.torch_budget or ("100G" if gpu else "6G")
    configs = _configs(args.only, args.slow, args.quick, args.device)
    bad = [i for i in args.rows or () if not 0 <= i < len(configs)]
    if bad:
        raise SystemExit(f"--rows {bad}: this selection has rows 0..{len(configs) - 1} (see --list)")
    configs = [configs[i] for i in args.rows] if args.rows else configs
    if args.list:
        for i, cfg in enumerate(configs):
            print(i, cfg, f"torch.func needs {torch_needs_gib(cfg['model'], cfg['n']):.1f} GiB")
        return
    if gpu:  # this parent measures the matmul peak only: it must not take the device's memory from the rows
        os.environ.update(JAX_PLATFORMS="cuda", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    peak = _matmul_peak()
    fast = f" (TF32, precision 'high': {_matmul_peak(precision='high') / 1e12:.0f} TFLOP/s)" if gpu else ""
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  device {args.device} ({jax.devices()[0].device_kind})  matmul peak "
        f"(float32 'highest', {8192 if gpu else 2048}², this run): {peak / 1e9:.0f} GFLOP/s{fast}; load "
        f"{os.getloadavg()}; budget {args.budget}; torch budget {args.torch_budget}",
        flush=True,
    )
    print(
        f"{'model':11} {'N':>5} {'method':11} {'K':>5} {'time s':>8} {'1st s':>7} {'RSS GiB':>7} {'mean|Δcos|':>10} "
        f"{'est.':>7} {'load':>5} {'× exact':>7} {'× floor':>7}  note",
        flush=True,
    )
    env = _subprocess.child_env(args.device, args.budget)
    exact_t, floors, ours, torch_rows = {}, {}, {}, {}
    for cfg in configs:
        m = (cfg["model"], cfg["n"])
        name = cfg.get("impl", cfg["method"]) + (f"/b{cfg['block']}" if cfg.get("block") else "")
        name += f"/{cfg['precision']}" if cfg.get("precision") else ""
        head = f"{cfg['model']:11} {cfg['n']:>5} {name:11} {cfg.get('k') or '':>5}"
        if args.reuse_exact and cfg["method"] == "exact" and (_CACHE / f"exact_{m[0]}_{m[1]}.npy").exists():
            continue
        load = os.getloadavg()[0]
        if args.repeat_below is not None:
            cfg = {**cfg, "repeat_below": args.repeat_below}
        r = _subprocess.run_child([sys.executable, __file__, "--child", json.dumps(cfg)], env=env, timeout=args.timeout)
        if isinstance(r, str):
            print(f"{head} {r}", flush=True)
            ours.setdefault(m, []).append((name, cfg.get("k"), None))
        else:
            _print_row(head, cfg, r, m, load, peak, exact_t, floors, args.budget)
            ours.setdefault(m, []).append((name, cfg.get("k"), r["time"]))
        if cfg["method"] == "exact" and m not in torch_rows and not args.no_torch:
            load = os.getloadavg()[0]
            t = torch_rows[m] = _run_torch(*m, args, _subprocess.run_child)
            thead = f"{m[0]:11} {m[1]:>5} {'torch.func':11} {'':>5}"
            if isinstance(t, str):
                print(f"{thead} {t}", flush=True)
                continue
            note = (
                f"vmap(jacrev) + einsum, chunk {_torch_chunk(*m)}, torch {t['torch']} ({t['threads']} threads), "
                f"max|Δ logit| {t['logit_err']:.1e}, max|Δcos| vs ours {t.get('max_err', float('nan')):.1e}"
            )
            print(
                f"{thead} {t['time']:8.2f} {t['first']:7.2f} {t['rss_gib']:7.2f} {t.get('err', float('nan')):10.4f} "
                f"{'':>7} {load:5.1f} {t['time'] / exact_t[m] if m in exact_t else float('nan'):7.2f} "
                f"{'':>7}  {note}",
                flush=True,
            )
    print(f"matmul peak at the end: {_matmul_peak() / 1e9:.0f} GFLOP/s; load {os.getloadavg()}")
    _summary(ours, torch_rows)


def _print_row(head, cfg, r, m, load, peak, exact_t, floors, budget) -> None:
    import _subprocess

    if cfg["method"] == "exact":
        if m not in exact_t or not (cfg.get("block") or cfg.get("impl") or cfg.get("precision")):  # the default call
            exact_t[m] = r["time"]
        floors[m] = _subprocess.floor_seconds(m, r["floors"], peak)
        print(
            f"  memory {m}: runtime alone {r['rss_jax_gib']:.2f} GiB, estimate of the unblocked call "
            f"{r['est_gib']:.2f} GiB (budget {budget})",
            flush=True,
        )
    if cfg["method"] != "exact" and m not in floors and r.get("floors"):
        floors[m] = _subprocess.floor_seconds(m, r["floors"], peak)
    fl = floors.get(m, {}).get("exact" if cfg["method"] == "exact" else "proj")
    print(
        f"{head} {r['time']:8.2f} {r['first']:7.2f} {r['rss_gib']:7.2f} {r.get('err', float('nan')):10.4f} "
        f"{r['est'] if r.get('est') is not None else float('nan'):7.4f} {load:5.1f} "
        f"{r['time'] / exact_t[m] if m in exact_t else float('nan'):7.2f} "
        f"{r['time'] / fl if fl else float('nan'):7.2f}"
        + (f"  device peak {r['dev_gib']:.2f} GiB" if r.get("dev_gib") is not None else ""),
        flush=True,
    )


def _summary(ours: dict, torch_rows: dict) -> None:
    """ours / torch.func for every configuration of the run (time of our row over the recipe's time)."""
    if not torch_rows:
        return
    print("\nours / torch.func tutorial recipe (time ratio; < 0.1 meets the issue's goal of >= 10x):")
    for m, rows in ours.items():
        t = torch_rows.get(m)
        if t is None:
            continue
        if isinstance(t, str):
            print(f"  {m[0]:11} N = {m[1]:>5}: torch.func {t}")
            continue
        cells = ", ".join(
            f"{name}{f' K={k}' if k else ''} {tt / t['time']:.3f}" if tt is not None else f"{name} failed"
            for name, k, tt in rows
        )
        print(f"  {m[0]:11} N = {m[1]:>5}: torch.func {t['time']:.2f} s; {cells}")


if __name__ == "__main__":
    main()
