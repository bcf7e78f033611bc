"""Anchor benchmark: jaxcompare's structured trNTK⁰ against neural-tangents 0.6.5, same run, same machine, identical
float32 parameters and inputs (saved once to .npz), and agreement checked.

neural-tangents does not import on JAX >= 0.6 and needs tensorflow, so this script builds its own pinned
environment ``benchmarks/.nt-env`` (git-ignored) the first time::

    python3 -m venv benchmarks/.nt-env
    benchmarks/.nt-env/bin/pip install "jax==0.4.25" "jaxlib==0.4.25" "neural-tangents==0.6.5" "numpy<2" \
        "tensorflow-cpu>=2.15,<2.17" "scipy<1.13"

and runs neural-tangents there (``empirical_ntk_fn(f, trace_axes=(-1,), vmap_axes=0, implementation=i)``, jitted,
best of ``--repeat`` after a warm-up) while ours runs on current JAX (``benchmarks/bench_ntk.py`` child). Its trace
is a **mean** over classes, so agreement is ``max |K_ours - C·K_nt| / max |K_ours|``.

    python benchmarks/bench_ntk_anchor.py                   # MLP N = 256/1024/4096, CNN N = 256/1024
    python benchmarks/bench_ntk_anchor.py --mlp-n 1024 --cnn-n 256 --nt-impls 3
    python benchmarks/bench_ntk_anchor.py --mlp-n 256 --cnn-n 256 --nt-big   # all three of NT's at N = 256

neural-tangents' Jacobian contraction (1) and NTK-vector products (2) are run where they fit in 8 GiB and 2e12 FLOPs
(``--nt-big``: 16 GiB and 1e13, best of 1); above, they are printed as skipped with the estimate (the spec's anchor
figures: out of memory at N = 1024).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peer_env  # noqa: E402 - benchmarks/ is not a package

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_ntk as ours  # noqa: E402
import bench_ntk_models as models  # noqa: E402

ENV = HERE / ".nt-env"
PINS = [
    "jax==0.4.25",
    "jaxlib==0.4.25",
    "neural-tangents==0.6.5",
    "numpy<2",
    "tensorflow-cpu>=2.15,<2.17",
    "scipy<1.13",
]
NT_NAMES = {1: "NT jacobian", 2: "NT ntvp", 3: "NT structured"}
# (bytes, FLOPs) up to which neural-tangents' jacobian/ntvp are run: default, and with --nt-big (then best of 1)
NT_CAPS = {False: (ours.MAX_BYTES, 2e12), True: (16 * 2**30, 1e13)}

_RUNNER = textwrap.dedent(
    """
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    import jax, numpy as np
    import neural_tangents as nt
    import bench_ntk_models as models
    model, npz, impl, repeat, save = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    params, x = models.load(npz)
    f = models.MODELS[model][1]
    fn = nt.empirical_ntk_fn(f, trace_axes=(-1,), vmap_axes=0, implementation=impl)
    k_fn = jax.jit(lambda xx, p: fn(xx, None, p))
    t0 = time.perf_counter(); k = k_fn(x, params); k.block_until_ready(); first = time.perf_counter() - t0
    best = first
    for _ in range(repeat):
        t0 = time.perf_counter(); k = k_fn(x, params); k.block_until_ready(); best = min(best, time.perf_counter() - t0)
    np.save(save, np.asarray(k))
    print(json.dumps({"time": best, "first": first, "jax": jax.__version__, "nt": nt.__version__,
                      "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    """
)


def ensure_env() -> Path:
    return _peer_env.ensure_env(ENV, PINS)


def run_nt(py: Path, model: str, npz: Path, impl: int, repeat: int, save: Path, timeout: int = 900) -> dict:
    runner = npz.parent / "nt_runner.py"
    runner.write_text(_RUNNER)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    try:
        r = subprocess.run(
            [str(py), str(runner), str(HERE), model, str(npz), str(impl), str(repeat), str(save)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        msg = next((l for l in reversed(lines) if "Error" in l or "error" in l), lines[-1] if lines else "?")
        return {"error": f"failed (rc {r.returncode}): {msg[:100]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mlp-n", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--cnn-n", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--nt-impls", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--nt-big",
        action="store_true",
        help="also run neural-tangents' jacobian/ntvp where they need up to 16 GiB / 1e13 FLOPs "
        "(best of 1 after warm-up; minutes)",
    )
    args = ap.parse_args()
    import numpy as np

    py = ensure_env()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ntk_anchor_"))
    models.save(tmp / "mm.npz", models.mlp_init(0), models.inputs("mlp", 2))
    peak = ours.run_child("mlp", "matmul", 2, tmp / "mm.npz", args.repeat).get("gflops", float("nan"))
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    cols = [NT_NAMES[i] for i in args.nt_impls] + ["ours structured", "speedup", "agree (rel)", "ours f32 vs f64"]
    header = f"{'model':5} {'N':>6} " + " ".join(f"{c:>15}" for c in cols)
    print(header)
    print("-" * len(header))
    versions = None
    for model, n in [("mlp", n) for n in args.mlp_n] + [("cnn", n) for n in args.cnn_n]:
        init = models.MODELS[model][0]
        npz = tmp / f"{model}_{n}.npz"
        models.save(npz, init(0), models.inputs(model, n))
        cells, nt_times, nt_k = [], [], None
        for impl in args.nt_impls:
            key = {1: "jacobian", 2: "ntvp", 3: "structured"}[impl]
            mem, flops = ours.estimate(model, key, n)
            mem_cap, flop_cap = NT_CAPS[args.nt_big]
            if impl != 3 and (mem > mem_cap or flops > flop_cap):
                cells.append(f"skip(~{flops:.0e}F)")
                continue
            save = tmp / f"nt_{model}_{n}_{impl}.npy"
            r = run_nt(py, model, npz, impl, args.repeat if flops <= NT_CAPS[False][1] else 1, save)
            if "error" in r:
                cells.append(r["error"][:15])
                print(f"  [{model} N={n} {NT_NAMES[impl]}] {r['error']}", flush=True)
                continue
            versions = versions or f"jax {r['jax']}, neural-tangents {r['nt']}"
            cells.append(f"{r['time']:.3f}")
            nt_times.append(r["time"])
            if nt_k is None:
                nt_k = np.load(save)
        save = tmp / f"ours_{model}_{n}.npy"
        r = ours.run_child(model, "structured", n, npz, args.repeat, save=save)
        if "error" in r:
            cells += [r["error"][:15], "", "", ""]
        else:
            cells.append(f"{r['time']:.3f}")
            cells.append(f"{min(nt_times) / r['time']:.2f}x" if nt_times else "")
            k = np.load(save)
            c = 10
            cells.append(f"{np.abs(k - c * nt_k).max() / np.abs(k).max():.1e}" if nt_k is not None else "")
            # the scale of float32 agreement: the same kernel of ours in float64 (one untimed call)
            save64 = tmp / f"ours64_{model}_{n}.npy"
            r64 = ours.run_child(model, "structured", n, npz, 0, save=save64, x64=True)
            cells.append(
                r64["error"][:15]
                if "error" in r64
                else f"{np.abs(k - np.load(save64)).max() / np.abs(np.load(save64)).max():.1e}"
            )
        print(f"{model:5} {n:>6} " + " ".join(f"{c:>15}" for c in cells), flush=True)
    print(
        f"\nneural-tangents side: {versions}; ours: current JAX. Times in seconds, best of {args.repeat} "
        "after warm-up; "
        "speedup = fastest neural-tangents / ours; agree = max |ours − C·NT| / max |ours|; "
        "ours f32 vs f64 = the same relative difference between our float32 and float64 kernels."
    )


if __name__ == "__main__":
    main()
