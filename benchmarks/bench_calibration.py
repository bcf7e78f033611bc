"""Calibration benchmark: ``jc.smooth_ece`` against relplot 1.0.3 (values and speed), ``jc.kendall_tau`` against
``scipy.stats.kendalltau`` (speed, values).

relplot is not a dependency: this script builds its own environment ``benchmarks/.relplot-env`` (git-ignored) the
first time::

    python3 -m venv benchmarks/.relplot-env
    benchmarks/.relplot-env/bin/pip install "relplot==1.0.3"

and runs ``relplot.smECE(f, y)`` there (``relplot.multiclass_logits_to_confidences(p, y, probs=True)`` for top-label
inputs) on the same arrays (saved once to ``.npz``), while ours runs here in float64 (``jax_enable_x64``).

Cases: relplot's own demo recipe (``notebooks/demo.ipynb``: ``f ~ U(0,1)``, ``y = [u > 1 - (f + 0.2 sin 2πf)]``,
N = 10⁴, here seeded), a calibrated and an over-confident sample, a small sample (n = 50), a multiclass top-label
sample, and 10⁵ random points; then both timed at 10⁶ points (best of ``--repeat``, after a warm-up for ours).
Goals (issue 18): ``|ours - relplot| <= 1e-4``, ours ``>= 10x`` faster at 10⁶; ``kendall_tau`` at least as fast as
SciPy at 10⁶ points with ties, same value to ``1e-7``.

    python benchmarks/bench_calibration.py                 # everything (about a minute)
    python benchmarks/bench_calibration.py --skip-relplot  # kendall only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peer_env  # noqa: E402 - benchmarks/ is not a package
import numpy as np

HERE = Path(__file__).resolve().parent
ENV = HERE / ".relplot-env"
PINS = ["relplot==1.0.3"]

_RUNNER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, relplot
    d = np.load(sys.argv[1]); repeat = int(sys.argv[2]); out = {"version": relplot.__version__ if hasattr(relplot,
        "__version__") else "1.0.3", "values": {}, "sigma": {}}
    for name in sorted({k.rsplit("_", 1)[0] for k in d.files}):
        p, y = d[name + "_p"], d[name + "_y"]
        if p.ndim == 2:
            p, y = relplot.multiclass_logits_to_confidences(p, y, probs=True)
        if name == "timing":
            best = 1e9
            for _ in range(repeat):
                t0 = time.perf_counter(); v = relplot.smECE(p, y); best = min(best, time.perf_counter() - t0)
            out["time"] = best
        v, s = relplot.metrics.smECE(p, y, return_width=True)
        out["values"][name], out["sigma"][name] = float(v), float(s)
    print(json.dumps(out))
    """
)


def ensure_env() -> Path:
    return _peer_env.ensure_env(ENV, PINS)


def cases(n_time: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The benchmark inputs (seeded): name -> (probs, labels); ``n_time = 0`` leaves out the timing case."""
    rng = np.random.default_rng(2024)
    out = {}
    f = rng.random(10_000)
    out["demo"] = (f, (rng.random(10_000) > 1 - (f + 0.2 * np.sin(2 * np.pi * f))).astype(np.int64))
    f = rng.random(20_000)
    out["calibrated"] = (f, (rng.random(20_000) < f).astype(np.int64))
    f = rng.beta(5, 2, 20_000)
    out["overconfident"] = (f, (rng.random(20_000) < f**2).astype(np.int64))
    f = rng.random(50)
    out["small"] = (f, (rng.random(50) < f).astype(np.int64))
    logits = 2.5 * rng.normal(size=(5_000, 10))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(10, p=row**1.5 / (row**1.5).sum()) for row in p])
    out["multiclass"] = (p, y)
    f = rng.random(100_000)
    out["random1e5"] = (f, (rng.random(100_000) < 0.5 + 0.8 * (f - 0.5) ** 3 + 0.1 * f).astype(np.int64))
    if n_time:  # drawn last: the cases above do not depend on it (tests/test_calibration.py uses cases(0))
        f = rng.random(n_time)
        out["timing"] = (f, (rng.random(n_time) < f**1.2).astype(np.int64))
    return out


def best_of(fn, repeat: int) -> float:
    best = 1e9
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_smooth_ece(repeat: int, n_time: int) -> list[str]:
    import jax

    import jaxcompare as jc

    py = ensure_env()
    data = cases(n_time)
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "cases.npz")
        np.savez(npz, **{f"{k}_p": v[0] for k, v in data.items()}, **{f"{k}_y": v[1] for k, v in data.items()})
        res = subprocess.run([str(py), "-c", _RUNNER, npz, str(repeat)], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr)
    ref = json.loads(res.stdout)
    rows = ["| case | n | relplot 1.0.3 | jaxcompare (float64) | abs diff | σ* (both) |", "|---|---|---|---|---|---|"]
    worst = 0.0
    for name, (p, y) in data.items():
        v, s = jc.smooth_ece(p, y, return_sigma=True)
        d = abs(float(v) - ref["values"][name])
        worst = max(worst, d)
        same = "same" if float(s) == ref["sigma"][name] else f"{float(s):.6g} vs {ref['sigma'][name]:.6g}"
        rows.append(
            f"| {name} | {len(y)} | {ref['values'][name]!r} | {float(v)!r} | {d:.1e} | "
            f"{ref['sigma'][name]:.10g} {same} |"
        )
    p, y = data["timing"]
    pj, yj = jax.device_put(p), jax.device_put(y)
    p32 = jax.device_put(p.astype(np.float32))
    jc.smooth_ece(pj, yj).block_until_ready()
    jc.smooth_ece(p32, yj).block_until_ready()
    t64 = best_of(lambda: jc.smooth_ece(pj, yj).block_until_ready(), repeat)
    t32 = best_of(lambda: jc.smooth_ece(p32, yj).block_until_ready(), repeat)
    tnp = best_of(lambda: jc.smooth_ece(p, y).block_until_ready(), repeat)
    rows += [
        "",
        f"worst |diff| = {worst:.2e} (goal <= 1e-4)",
        "",
        f"| smooth_ece at n = {n_time:.0e} | time (s) | speed-up vs relplot |",
        "|---|---|---|",
        f"| relplot 1.0.3 (NumPy) | {ref['time']:.3f} | 1.0x |",
        f"| jaxcompare float64, device arrays | {t64:.4f} | {ref['time'] / t64:.1f}x |",
        f"| jaxcompare float32, device arrays | {t32:.4f} | {ref['time'] / t32:.1f}x |",
        f"| jaxcompare float64, NumPy input (incl. validation, transfer) | {tnp:.4f} | {ref['time'] / tnp:.1f}x |",
    ]
    return rows


def bench_kendall(repeat: int, n: int) -> list[str]:
    import scipy.stats

    import jaxcompare as jc

    rng = np.random.default_rng(7)
    sets = {
        "integer scores 0..999 (both)": (rng.integers(0, 1000, n).astype(float), rng.integers(0, 1000, n).astype(float))
    }
    x = rng.integers(0, 1000, n).astype(float)
    sets["x: 0..999, y: integer + 0.3x"] = (x, rng.integers(0, 1000, n) + 0.3 * x)
    x = rng.integers(0, 100, n).astype(float)
    sets["x: 0..99, y: continuous"] = (x, x + 30 * rng.normal(size=n))
    x = rng.normal(size=n)
    sets["continuous (no ties)"] = (x, x + rng.normal(size=n))
    rows = [
        f"| kendall_tau at n = {n:.0e} | scipy (s) | jaxcompare (s) | speed vs scipy | CPU-time ratio | abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for name, (x, y) in sets.items():
        ts, cs = best_of_wall_cpu(lambda x=x, y=y: scipy.stats.kendalltau(x, y), repeat)
        to, co = best_of_wall_cpu(lambda x=x, y=y: float(jc.kendall_tau(x, y)), repeat)
        d = abs(float(jc.kendall_tau(x, y)) - scipy.stats.kendalltau(x, y).statistic)
        rows.append(f"| {name} | {ts:.3f} | {to:.3f} | {ts / to:.2f}x | {cs / co:.2f}x | {d:.1e} |")
    return rows


def best_of_wall_cpu(fn, repeat: int) -> tuple[float, float]:
    """Best wall-clock and best process CPU time over ``repeat`` calls (CPU time is steadier on a shared machine;
    both peers here run single-threaded)."""
    wall = cpu = 1e9
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-time", type=int, default=1_000_000, help="points for the timings")
    ap.add_argument("--skip-relplot", action="store_true")
    ap.add_argument("--skip-kendall", action="store_true")
    args = ap.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; jax {jax.__version__}, "
        f"{jax.devices()[0].platform}"
    )
    if not args.skip_relplot:
        print("\n".join(bench_smooth_ece(args.repeat, args.n_time)))
        print()
    if not args.skip_kendall:
        print("\n".join(bench_kendall(args.repeat, args.n_time)))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
