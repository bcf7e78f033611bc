"""Projected features (``project_gradients``) against the exact trNTK and against TRAK's projector, in one run.

    python benchmarks/bench_ntk_projection.py                       # small CNN N = 512; ResNet-18 ¼ width N = 1024
    python benchmarks/bench_ntk_projection.py --only cnn            # just the small CNN rows (with TRAK)
    python benchmarks/bench_ntk_projection.py --only resnet_q --n10k  # add the ResNet at N = 10 000 (projected)
    python benchmarks/bench_ntk_projection.py --device gpu          # the same table on an accelerator, larger sizes
    python benchmarks/bench_ntk_projection.py --errors              # error vs dim of every projection kind (MLP)

Every row runs in its own subprocess (its peak RSS is that row's alone); the matmul peak is measured in the same
run, and the FLOP floors (C backward passes + per-example layer gradients, + the Gram for the exact kernel) are
printed with each model. Error: mean |Δcos| of the cosine-normalized projected trNTK against the exact trNTK of the
same run (off-diagonal entries); ``est.`` is ``projected_kernel(...).mean_abs_error`` (two half-sketches, no exact
kernel needed). ``time s`` is a second, compiled call when the first took under ``--repeat-below`` seconds.
Rows ``structured/pP``: the structured sketch with ``output_probes=P`` (P random ±1 combinations of the 10 logits,
P backward passes per example instead of 10); their floor counts P passes.

TRAK: ``trak.projectors.BasicProjector`` (traker 0.3.2, its CPU projector: a dense Rademacher matrix generated in
blocks) applied to per-example, per-class gradients from ``torch.func.vmap(jacrev)`` — run in the benchmark's own
environment ``benchmarks/.trak-env`` (CPU or CUDA torch from the package index, never a dependency of jaxcompare),
on the same weights and inputs (an ``.npz`` written by this script; the torch model's logits are checked against
ours). The projector gets ``block_size = K`` when the ``P × K`` matrix fits in 2 GiB (its fastest setting).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_CACHE = HERE / "results" / "ntk_projection"  # git-ignored (benchmarks/results)
TRAK_ENV = HERE / ".trak-env"
TRAK_PINS = ["torch==2.14.1", "traker==0.3.2"]


# ---------------------------------------------------------------------------------------------------------------
# jaxcompare side (imports jax lazily: the TRAK child runs this file under torch only)
# ---------------------------------------------------------------------------------------------------------------
def _models():
    sys.path.insert(0, str(HERE))
    import bench_ntk_models as models

    full = dict(models.MODELS)
    init_q, apply_r, shape = full["resnet_q"]
    full["resnet"] = (lambda seed: init_q(seed, widths=(64, 128, 256, 512)), apply_r, shape)  # 11.2 M
    return models, full


def _child(cfg: dict) -> dict:
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxcompare as jc

    models, table = _models()
    model, n, method, k = cfg["model"], cfg["n"], cfg["method"], cfg.get("k")
    init, f, shape = table[model]
    params = jax.tree_util.tree_map(jnp.asarray, init(0))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((n,) + shape).astype(np.float32))
    key = jax.random.key(cfg.get("seed", 0))
    est = t_feat = None

    def run():
        nonlocal est, t_feat
        if method == "exact":
            kfn = jc.trace_ntk(f)
            if cfg.get("block"):
                kfn = jc.batched(kfn, cfg["block"], progress_bar=False)
            return kfn(params, x)
        t0 = time.perf_counter()
        if method == "structured":
            proj = jc.structured_projection(key, k, output_probes=cfg.get("probes"))
            feats = jc.project_gradients(f, params, x, proj)
        else:
            feats = jc.project_gradients(f, params, x, jc.random_projection(key, k, method))
        jax.block_until_ready(feats)
        t_feat = time.perf_counter() - t0
        pk = jc.projected_kernel(feats)
        est = float(pk.mean_abs_error)
        return pk.kernel

    t0 = time.perf_counter()
    kern = np.asarray(jax.block_until_ready(run()))
    first = t = time.perf_counter() - t0
    if first < cfg.get("repeat_below", 60.0):
        t0 = time.perf_counter()
        kern = np.asarray(jax.block_until_ready(run()))
        t = time.perf_counter() - t0
    out = {"time": t, "first": first, "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    out["feat_time"] = t_feat  # the features alone (TRAK's rows time only theirs), of the same call as "time"
    out["dev_gib"] = models.device_peak_gib()
    out["est"] = est
    exact_path = _CACHE / f"exact_{model}_{n}.npy"
    # FLOP floors (every model here is one of bench_ntk_models.MODELS); the parent prefers an exact row's
    out["floors"] = models._floors(model, n, params, x, passes=cfg.get("probes") or 10)
    if method == "exact":
        _CACHE.mkdir(parents=True, exist_ok=True)
        np.save(exact_path, kern)
        if cfg.get("save_npz"):  # weights, inputs and logits for the TRAK child
            models.save(
                _CACHE / f"{model}_{n}.npz", [{kk: np.asarray(v) for kk, v in d.items()} for d in params], np.asarray(x)
            )
            np.save(_CACHE / f"{model}_{n}_logits.npy", np.asarray(f(params, x)))
    elif exact_path.exists():
        iu = np.triu_indices(n, 1)
        out["err"] = float(np.abs(kern - np.load(exact_path))[iu].mean())
    return out


def _matmul_peak(size: int | None = None, reps: int = 5, precision: str = "highest") -> float:
    """As bench_ntk_models._matmul_peak (float32 at ``precision``; 8192² on an accelerator)."""
    sys.path.insert(0, str(HERE))
    import bench_ntk_models as models

    return models._matmul_peak(size, reps, precision)


# ---------------------------------------------------------------------------------------------------------------
# TRAK side: runs under benchmarks/.trak-env (torch, traker); no jax here
# ---------------------------------------------------------------------------------------------------------------
def _trak_child(cfg: dict) -> dict:
    import resource

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.func import jacrev, vmap
    from trak.projectors import BasicProjector, ProjectionType

    dev = torch.device("cuda" if cfg["device"] == "gpu" else "cpu")
    z = np.load(_CACHE / f"cnn_{cfg['n']}.npz")
    params = {k: torch.tensor(z[k], device=dev) for k in z.files if k.startswith("p")}
    x = torch.tensor(z["x"], device=dev).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    strides = (1, 2, 2)

    def apply_one(p, xi):  # bench_ntk_models.cnn_apply for one example: SAME padding as XLA computes it
        h = xi[None]
        for i, s in enumerate(strides):
            w = p[f"p{i}_w"].permute(3, 2, 0, 1)  # HWIO -> OIHW
            size = h.shape[-1]
            out = -(-size // s)
            pad = max((out - 1) * s + 3 - size, 0)
            h = F.pad(h, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
            h = torch.relu(F.conv2d(h, w, stride=s) + p[f"p{i}_b"][None, :, None, None])
        h = h.permute(0, 2, 3, 1).reshape(1, -1)  # flatten in NHWC order, as jax does
        return (h @ p["p3_w"] + p["p3_b"])[0]

    with torch.no_grad():
        logits = torch.stack([apply_one(params, x[i]) for i in range(min(8, x.shape[0]))]).cpu().numpy()
    ref = np.load(_CACHE / f"cnn_{cfg['n']}_logits.npy")[: logits.shape[0]]
    logit_err = float(np.abs(logits - ref).max())
    names = sorted(params)
    grad_dim = sum(params[k].numel() for k in names)
    k = cfg["k"]
    block = k if grad_dim * k * 4 <= 2**31 else 100
    proj = BasicProjector(grad_dim, k, 0, ProjectionType.rademacher, dev, block_size=block)
    jac = vmap(jacrev(apply_one), in_dims=(None, 0))
    n, bs = x.shape[0], cfg.get("batch", 64)

    def run():
        feats, t_grad = [], 0.0
        for lo in range(0, n, bs):
            t0 = time.perf_counter()
            j = jac(params, x[lo : lo + bs])
            g = torch.cat([j[nm].reshape(j[nm].shape[0], j[nm].shape[1], -1) for nm in names], dim=2)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_grad += time.perf_counter() - t0
            feats.append(proj.project(g.reshape(-1, grad_dim), model_id=0).reshape(g.shape[0], g.shape[1], k))
        phi = torch.cat(feats)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return phi, t_grad

    t0 = time.perf_counter()
    phi, t_grad = run()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    phi, t_grad = run()
    t = time.perf_counter() - t0
    phi = phi.double().cpu().numpy()
    k0 = np.einsum("ick,jck->ij", phi, phi)
    d = np.sqrt(np.diag(k0))
    kern = k0 / d[:, None] / d[None, :]
    exact = np.load(_CACHE / f"exact_cnn_{cfg['n']}.npy")
    iu = np.triu_indices(n, 1)
    return {
        "time": t,
        "first": first,
        "grad_time": t_grad,
        "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "err": float(np.abs(kern - exact)[iu].mean()),
        "logit_err": logit_err,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "block_size": block,
    }


# ---------------------------------------------------------------------------------------------------------------
# the parent: configurations, subprocesses, the table
# ---------------------------------------------------------------------------------------------------------------
def _configs(args) -> list:
    gpu = args.device == "gpu"
    out = []
    if "cnn" in args.only:
        n = 4096 if gpu else 512
        out.append(dict(model="cnn", n=n, method="exact", save_npz=True))
        for k in (1024, 4096):
            out += [dict(model="cnn", n=n, method="structured", k=k), dict(model="cnn", n=n, method="trak", k=k)]
        out.append(dict(model="cnn", n=n, method="sparse", k=1024))
        out.append(dict(model="cnn", n=n, method="rademacher", k=1024))
    if "resnet_q" in args.only:
        n = args.n_resnet or (4096 if gpu else 1024)
        out.append(dict(model="resnet_q", n=n, method="exact"))
        out += [dict(model="resnet_q", n=n, method="structured", k=k) for k in (1024, 4096)]
        out += [dict(model="resnet_q", n=n, method="structured", k=1024, probes=p) for p in (4, 2)]
        if args.slow:
            out.append(dict(model="resnet_q", n=n, method="sparse", k=1024))
        if args.n10k:
            out.append(dict(model="resnet_q", n=10_000, method="structured", k=1024, repeat_below=0))
    if "resnet" in args.only:  # full width (11.2 M parameters)
        n = 1024 if gpu else 256
        out.append(dict(model="resnet", n=n, method="exact"))
        out.append(dict(model="resnet", n=n, method="structured", k=4096))
        if gpu:
            out += [dict(model="resnet", n=nn, method="structured", k=4096, repeat_below=0) for nn in (10_000, 50_000)]
            out.append(dict(model="resnet", n=50_000, method="structured", k=4096, probes=4, repeat_below=0))
    return out


def _run_child(cfg: dict, args) -> dict | str:
    """One row in its own subprocess (benchmarks/_subprocess.py): its result with its peak RSS, or why it gave none."""
    sys.path.insert(0, str(HERE))
    import _subprocess

    env = _subprocess.child_env(args.device, args.budget)
    cfg = {**cfg, "device": args.device, "repeat_below": cfg.get("repeat_below", args.repeat_below)}
    if cfg["method"] == "trak":
        import _peer_env

        py = str(_peer_env.ensure_env(TRAK_ENV, TRAK_PINS))
        env.pop("JAX_PLATFORMS")
        cmd = [py, __file__, "--trak-child", json.dumps(cfg)]
    else:
        cmd = [sys.executable, __file__, "--child", json.dumps(cfg)]
    return _subprocess.run_child(cmd, env=env, timeout=args.timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--trak-child", help=argparse.SUPPRESS)
    ap.add_argument("--errors", action="store_true", help="the error-vs-dim table of every projection kind (MLP)")
    ap.add_argument("--only", nargs="+", default=["cnn", "resnet_q"], choices=["cnn", "resnet_q", "resnet"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu: the same table on an accelerator")
    ap.add_argument("--slow", action="store_true", help="also the slow existing sparse path on the ResNet")
    ap.add_argument("--n10k", action="store_true", help="also the projected ResNet ¼ at N = 10 000")
    ap.add_argument("--n-resnet", type=int, default=None, help="N of the ResNet ¼ rows (default 1024; gpu 4096)")
    ap.add_argument("--no-trak", action="store_true", help="skip the TRAK rows (no torch environment built)")
    ap.add_argument("--rows", nargs="+", type=int, help="only these rows (0-based) of the configurations")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per row")
    ap.add_argument("--repeat-below", type=float, default=300.0, help="time a second call when the first is faster")
    ap.add_argument("--budget", default=None, help="JAXCOMPARE_MEMORY_BUDGET of the rows (default 1.5G; gpu 40G)")
    ap.add_argument("--n", type=int, default=64, help="--errors: N")
    ap.add_argument("--keys", type=int, default=3, help="--errors: keys per cell")
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 256, 1024, 4096], help="--errors: dims")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(json.loads(args.child))), flush=True)
        return
    if args.trak_child:
        print("RESULT " + json.dumps(_trak_child(json.loads(args.trak_child))), flush=True)
        return
    if args.errors:
        _errors(args)
        return
    args.budget = args.budget or ("40G" if args.device == "gpu" else "1.5G")
    configs = _configs(args)
    bad = [i for i in args.rows or () if not 0 <= i < len(configs)]
    if bad:
        raise SystemExit(f"--rows {bad}: this selection has rows 0..{len(configs) - 1}")
    if args.device == "gpu":  # this parent measures the matmul peak only: it must not take the device's memory
        os.environ.update(JAX_PLATFORMS="cuda", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    peak = _matmul_peak()
    gpu = args.device == "gpu"
    fast = f" (TF32, precision 'high': {_matmul_peak(precision='high') / 1e12:.0f} TFLOP/s)" if gpu else ""
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  device {args.device}  matmul peak (float32 'highest', "
        f"{8192 if gpu else 2048}², this run): {peak / 1e9:.0f} GFLOP/s{fast}; load {os.getloadavg()[0]:.1f}; "
        f"budget {args.budget}",
        flush=True,
    )
    print(
        f"{'model':9} {'N':>6} {'method':11} {'K':>5} {'time s':>8} {'1st s':>7} {'RSS GiB':>7} {'mean|Δcos|':>10} "
        f"{'est.':>7} {'load':>5} {'× exact':>7} {'× floor':>7}  note",
        flush=True,
    )
    exact_t, floors, feat_t = {}, {}, {}
    for cfg in [configs[i] for i in args.rows] if args.rows else configs:
        if cfg["method"] == "trak" and args.no_trak:
            continue
        load = os.getloadavg()[0]
        r = _run_child(cfg, args)
        m = (cfg["model"], cfg["n"])
        label = cfg["method"] + (f"/p{cfg['probes']}" if cfg.get("probes") else "")
        if isinstance(r, str):
            print(f"{cfg['model']:9} {cfg['n']:>6} {label:11} {cfg.get('k') or '':>5} {r}", flush=True)
            continue
        if cfg["method"] == "exact":
            import _subprocess

            exact_t[m] = r["time"]
            floors[m] = _subprocess.floor_seconds(m, r["floors"], peak)
        fm = m if cfg["method"] == "exact" else (cfg["model"], min(cfg["n"], max((k[1] for k in floors), default=0)))
        fl = floors.get(fm, {}).get("exact" if cfg["method"] == "exact" else "proj")
        if fl and fm != m:  # another N than the exact row: floors scale linearly in N for the projected path
            fl = fl * cfg["n"] / fm[1]
        if cfg.get("probes") or (not fl and r.get("floors")):  # output probes, or no exact row: the row's own
            import _subprocess

            name = m + ((f"{cfg['probes']} probes",) if cfg.get("probes") else ())
            fl = _subprocess.floor_seconds(name, r["floors"], peak)["proj"]
        note = ""
        if cfg["method"] == "trak":
            note = (
                f"torch {r['torch']} ({r['threads']} threads), jacrev {r['grad_time']:.2f} s, block {r['block_size']}, "
                f"max|logit Δ| {r['logit_err']:.1e}"
            )
        if r.get("feat_time") is not None:
            note += f"features {r['feat_time']:.2f} s"
            feat_t[(m, label, cfg.get("k"))] = r["feat_time"]
        if cfg["method"] == "trak" and (m, "structured", cfg.get("k")) in feat_t:
            ours = feat_t[(m, "structured", cfg.get("k"))]
            note += f"; structured features {r['time'] / ours:.1f}x faster"
        if r.get("dev_gib") is not None:
            note += f" device peak {r['dev_gib']:.2f} GiB"
        ratio = r["time"] / exact_t[m] if m in exact_t else float("nan")
        print(
            f"{cfg['model']:9} {cfg['n']:>6} {label:11} {cfg.get('k') or '':>5} {r['time']:8.2f} "
            f"{r['first']:7.2f} {r['rss_gib']:7.2f} {r.get('err', float('nan')):10.4f} "
            f"{r['est'] if r.get('est') is not None else float('nan'):7.4f} {load:5.1f} {ratio:7.2f} "
            f"{r['time'] / fl if fl else float('nan'):7.2f}  {note}",
            flush=True,
        )
    print(f"matmul peak at the end: {_matmul_peak() / 1e9:.0f} GFLOP/s; load {os.getloadavg()[0]:.1f}")


def _errors(args) -> None:
    """Error of the cosine-normalized projected trNTK against the exact one vs the projected dimension: dense
    Rademacher/Gaussian (forward mode), the sparse JL sketch, the structured sketch and the Kronecker-factored
    projection; MLP 784-512-512-10. Columns: mean and max |Δcos| (mean over keys), mean·√k (constant when the error
    decays like 1/√k), mean·k (the spec's ``a``), time of one projected kernel after compilation. For the Kronecker
    projection ``dim`` is its total feature dimension."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxcompare as jc

    models, _ = _models()
    f = models.mlp_apply
    params = jax.tree_util.tree_map(jnp.asarray, models.mlp_init(0))
    x = jnp.asarray(models.inputs("mlp", args.n))
    exact = np.asarray(jc.trace_ntk(f, implementation="structured")(params, x))
    iu = np.triu_indices(args.n, 1)

    def kron(key, dim):  # k_in = k_out = sqrt(dim / 3) over the three layers
        k = max(1, int(round(np.sqrt(dim / 3))))
        return jc.kronecker_projection(key, k, k)

    makers = {
        "rademacher": lambda key, d: jc.random_projection(key, d, "rademacher"),
        "gaussian": lambda key, d: jc.random_projection(key, d, "gaussian"),
        "sparse (nnz=1)": lambda key, d: jc.random_projection(key, d, "sparse"),
        "structured": lambda key, d: jc.structured_projection(key, d),
        "kronecker": kron,
    }
    print(f"MLP 784-512-512-10, N = {args.n}, float32, {args.keys} keys per cell")
    print(
        f"{'projection':16} {'dim':>6} {'mean|Δcos|':>11} {'max|Δcos|':>10} {'mean·√k':>8} {'mean·k':>8} {'time s':>8}"
    )
    for name, make in makers.items():
        for d in args.dims:
            errs, maxs, times, dim = [], [], [], d
            for s in range(args.keys):
                proj = make(jax.random.key(s), d)
                if name == "kronecker":
                    dim = proj.feature_dim(f, params, x)
                k = jax.jit(jc.trace_ntk(f, projection=proj))
                jax.block_until_ready(k(params, x))
                t0 = time.perf_counter()
                kk = np.asarray(jax.block_until_ready(k(params, x)))
                times.append(time.perf_counter() - t0)
                e = np.abs(kk - exact)[iu]
                errs.append(e.mean())
                maxs.append(e.max())
            mm = float(np.mean(errs))
            print(
                f"{name:16} {dim:>6} {mm:11.4f} {np.mean(maxs):10.4f} {mm * np.sqrt(dim):8.2f} {mm * dim:8.1f} "
                f"{np.min(times):8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
