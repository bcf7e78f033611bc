"""Output probes (``output_probes=p``) against one backward pass per output, in one run.

    python benchmarks/bench_output_probes.py                  # both parts (about 20 minutes here)
    python benchmarks/bench_output_probes.py --only resnet    # quarter-width ResNet-18 (10 classes), N = 256
    python benchmarks/bench_output_probes.py --only tokens    # per-token logits: 64 positions × 10 classes (13 min)

``resnet``: the exact trNTK (structured engine) and the structured sketch (K = 1024) with one backward pass per class
and with p = 2, 4 and 8 probes, on ``bench_ntk_models``' quarter-width ResNet-18 at N = 256 (its weights and
inputs). ``tokens``: ``bench_ntk_models``' transformer (3.4 M parameters) with a head at every position, logits
``(N, 64, 10)``: the trNTK traces over all 640 outputs, so the exact kernel and a per-output sketch take 640
backward passes per example; the sketch with p = 8 and 32 probes takes p. At N = 16 every row is compared with the
exact kernel; at N = 256 only the probed sketch runs (the exact one would take about 16²× longer in its Gram alone).

Every row runs in its own subprocess (its peak RSS is its own), the matmul peak is measured in the same run, and
each row's FLOP floor counts its own backward passes (forward pass, ``m`` backward passes of twice its FLOPs, the
per-example layer gradients; the exact rows add the Gram ``N² m P``). Error: mean |Δcos| of the cosine-normalized
kernel against the exact one of the same run (off-diagonal entries); ``est.`` is ``projected_kernel``'s own estimate
from the two halves (which, with probes, also counts the probes' variance). ``time s``: a second, compiled call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_CACHE = HERE / "results" / "output_probes"  # git-ignored (benchmarks/results)


def _model(name: str):
    """``(apply_fn, params, inputs builder, bench_ntk_models name)``."""
    sys.path.insert(0, str(HERE))
    import bench_ntk_models as models

    if name == "resnet":
        init, f, _ = models.MODELS["resnet_q"]
        return f, init(0), (lambda n: models.inputs("resnet_q", n)), "resnet_q"
    init, _, _ = models.MODELS["transformer"]
    heads = models._TF["heads"]

    def per_token(params, tokens):  # the transformer with its head at every position: (N, 64, 10)
        t = tokens.shape[1]
        h = params[0]["emb"][tokens] + params[0]["pos"][None, :t]
        h = models._encoder(params[1:-1], h, heads)
        head = params[-1]
        return models._ln(h, head["lns"], head["lnb"]) @ head["w"] + head["b"]

    return per_token, init(0), (lambda n: models.inputs("transformer", n)), "transformer"


def _child(cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxcompare as jc

    sys.path.insert(0, str(HERE))
    import bench_ntk_models as models

    f, params, inputs, base = _model(cfg["model"])
    params = jax.tree_util.tree_map(jnp.asarray, params)
    n, method, probes = cfg["n"], cfg["method"], cfg.get("probes")
    x = jnp.asarray(inputs(n))
    outputs = int(np.prod(jax.eval_shape(f, params, x[:1]).shape[1:]))
    flat = lambda p, xx: f(p, xx).reshape(xx.shape[0], -1)  # noqa: E731 - (N, outputs), as the kernels see it
    floors = models._floors(base, n, params, x, passes=probes or outputs, apply_fn=flat)
    est = None

    def run():
        nonlocal est
        if method == "exact":
            return jc.trace_ntk(f)(params, x)
        proj = jc.structured_projection(jax.random.key(0), cfg["k"], output_probes=probes)
        pk = jc.projected_kernel(jc.project_gradients(f, params, x, proj))
        est = float(pk.mean_abs_error)
        return pk.kernel

    t0 = time.perf_counter()
    kern = np.asarray(jax.block_until_ready(run()))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    kern = np.asarray(jax.block_until_ready(run()))
    t = time.perf_counter() - t0
    out = {"time": t, "first": first, "est": est, "outputs": outputs, "floors": floors}
    path = _CACHE / f"exact_{cfg['model']}_{n}.npy"
    if method == "exact":
        _CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, kern)
    elif path.exists():
        iu = np.triu_indices(n, 1)
        out["err"] = float(np.abs(kern - np.load(path))[iu].mean())
    return out


def _configs(only: list) -> list:
    out = []
    if "resnet" in only:
        out.append(dict(model="resnet", n=256, method="exact"))
        out += [dict(model="resnet", n=256, method="sketch", k=1024, probes=p) for p in (None, 8, 4, 2)]
    if "tokens" in only:
        out.append(dict(model="tokens", n=16, method="exact"))
        out += [dict(model="tokens", n=16, method="sketch", k=1024, probes=p) for p in (None, 32, 8)]
        out.append(dict(model="tokens", n=256, method="sketch", k=1024, probes=8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--only", nargs="+", default=["resnet", "tokens"], choices=["resnet", "tokens"])
    ap.add_argument("--budget", default="1.5G", help="JAXCOMPARE_MEMORY_BUDGET of the rows")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per row")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(json.loads(args.child))), flush=True)
        return
    sys.path.insert(0, str(HERE))
    import _subprocess
    from bench_ntk_projection import _matmul_peak

    peak = _matmul_peak()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  matmul peak (float32 'highest', 2048², this run): {peak / 1e9:.0f} "
        f"GFLOP/s; load {os.getloadavg()[0]:.1f}; budget {args.budget}",
        flush=True,
    )
    print(
        f"{'model':7} {'N':>4} {'kernel':16} {'passes':>6} {'time s':>8} {'1st s':>7} {'RSS GiB':>7} "
        f"{'mean|Δcos|':>10} {'est.':>7} {'× exact':>8} {'× floor':>7} {'load':>5}",
        flush=True,
    )
    exact_t = {}
    env = _subprocess.child_env("cpu", args.budget)
    for cfg in _configs(args.only):
        load = os.getloadavg()[0]
        r = _subprocess.run_child([sys.executable, __file__, "--child", json.dumps(cfg)], env=env, timeout=args.timeout)
        p = cfg.get("probes")
        name = "exact trNTK" if cfg["method"] == "exact" else f"sketch, {p} probes" if p else "sketch, per output"
        if isinstance(r, str):
            print(f"{cfg['model']:7} {cfg['n']:>4} {name:16} {r}", flush=True)
            continue
        fl = _subprocess.floor_seconds((cfg["model"], cfg["n"], name), r["floors"], peak)
        fl = fl["exact" if cfg["method"] == "exact" else "proj"]
        m = (cfg["model"], cfg["n"])
        if cfg["method"] == "exact":
            exact_t[m] = r["time"]
        speed = exact_t[m] / r["time"] if m in exact_t else float("nan")
        print(
            f"{cfg['model']:7} {cfg['n']:>4} {name:16} {p or r['outputs']:>6} {r['time']:8.2f} {r['first']:7.2f} "
            f"{r['rss_gib']:7.2f} {r.get('err', float('nan')):10.4f} "
            f"{r['est'] if r.get('est') is not None else float('nan'):7.4f} {speed:8.1f} {r['time'] / fl:7.2f} "
            f"{load:5.1f}",
            flush=True,
        )
    print(f"matmul peak at the end: {_matmul_peak() / 1e9:.0f} GFLOP/s; load {os.getloadavg()[0]:.1f}")
    print("× exact: how many times faster than the exact kernel of the same model and N in this run.")


if __name__ == "__main__":
    main()
