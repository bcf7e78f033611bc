"""Power-law tail fits of layer spectra: jaxcompare.spectra.powerlaw_fit (both KS conventions) against the
``powerlaw`` package (Alstott et al. 2014) on the same eigenvalues, same run, same machine.

``powerlaw`` is not a dependency of jaxcompare: this script builds its own environment ``benchmarks/.powerlaw-env``
(git-ignored; the first run needs the network) the first time::

    python3 -m venv benchmarks/.powerlaw-env
    benchmarks/.powerlaw-env/bin/pip install powerlaw numpy scipy

and runs ``powerlaw.Fit(eigenvalues, discrete=False)`` there (every distinct value a candidate xmin, KS distance at
the data points, ``arange(0, n)/n``) while ours runs here with ``max_candidates=None`` (every value a candidate) and
``min_tail=2`` (``powerlaw`` has no minimum tail size). ``powerlaw`` 2.0 also keeps only candidates with
``α ∈ (0, 3)`` by default (``Power_Law.DEFAULT_PARAMETER_RANGES``), which Clauset et al.'s estimator does not: it is
run both ways, ``default`` and ``free`` (``parameter_ranges={"alpha": [1, None]}``), and the check
``|α_ours − α_powerlaw| ≤ σ_ours = (α − 1)/√n_tail`` is made against ``free`` for the reference convention
``ks="data"``. Times are the best of ``--repeat`` calls per fit (ours jitted and warm, after one compile).

    python benchmarks/bench_spectra.py               # < 2 min incl. the env, once built
    python benchmarks/bench_spectra.py --repeat 5
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
ENV = HERE / ".powerlaw-env"
PINS = ["powerlaw", "numpy", "scipy"]

_RUNNER = textwrap.dedent(
    """
    import json, sys, time, warnings
    import numpy as np
    import powerlaw
    warnings.filterwarnings("ignore")
    out = {}
    data = np.load(sys.argv[1])
    repeat = int(sys.argv[2])
    for name in data.files:
        x = data[name]
        for label, kw in (("default", {}), ("free", {"parameter_ranges": {"alpha": [1, None]}})):
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                fit = powerlaw.Fit(x, discrete=False, verbose=False, **kw)
                a = float(fit.power_law.alpha)
                best = min(best, time.perf_counter() - t0)
            xmin = float(fit.xmin)
            out[name + "|" + label] = {"alpha": a, "xmin": xmin, "n_tail": int(np.sum(x >= xmin)),
                                       "D": float(fit.power_law.D), "sigma": float(fit.power_law.sigma), "time": best}
    out["version"] = getattr(powerlaw, "__version__", "?")
    print(json.dumps(out))
    """
)


def ensure_env() -> Path:
    return _peer_env.ensure_env(ENV, PINS)


def spectra(seed: int = 0) -> dict[str, np.ndarray]:
    """Eigenvalues of WᵀW/N for a few layers (float64)."""
    rng = np.random.default_rng(seed)

    def eigs(W):
        return np.sort(np.linalg.svd(W, compute_uv=False) ** 2 / max(W.shape))

    out = {}
    out["student-t(3) 1000x500"] = eigs(rng.standard_t(3, (1000, 500)))
    out["student-t(2.5) 800x800"] = eigs(rng.standard_t(2.5, (800, 800)))
    # "trained-ish": Gaussian noise plus a learned part with power-law decaying singular values
    n, m, r = 1024, 512, 512
    U = np.linalg.qr(rng.standard_normal((n, r)))[0]
    V = np.linalg.qr(rng.standard_normal((m, r)))[0]
    s = 40.0 * np.arange(1, r + 1) ** -0.8
    out["noise+power-law signal 1024x512"] = eigs(0.5 * rng.standard_normal((n, m)) + (U * s) @ V.T)
    return out


def ours(x: np.ndarray, ks: str, repeat: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    from jaxcompare.spectra import powerlaw_fit

    xj = jax.numpy.asarray(x)
    fit = powerlaw_fit(xj, ks=ks, min_tail=2, max_candidates=None)  # compiles
    jax.block_until_ready(fit)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fit = jax.block_until_ready(powerlaw_fit(xj, ks=ks, min_tail=2, max_candidates=None))
        best = min(best, time.perf_counter() - t0)
    return {"alpha": float(fit.alpha), "xmin": float(fit.xmin), "n_tail": int(fit.n_tail), "D": float(fit.ks),
            "sigma": float(fit.sigma), "time": best}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    py = ensure_env()
    data = spectra()
    tmp = Path(tempfile.mkdtemp(prefix="bench_spectra_"))
    np.savez(tmp / "eigs.npz", **data)
    (tmp / "runner.py").write_text(_RUNNER)
    env = dict(os.environ)
    r = subprocess.run([str(py), str(tmp / "runner.py"), str(tmp / "eigs.npz"), str(args.repeat)],
                       capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    if r.returncode != 0:
        sys.exit(f"powerlaw runner failed: {r.stderr.strip().splitlines()[-1:]}")
    pl = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"powerlaw {pl.pop('version')}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    header = f"{'spectrum':32} {'fit':16} {'xmin':>9} {'alpha':>7} {'sigma':>6} {'n_tail':>6} {'KS':>6} {'ms/fit':>8}"
    print(header)
    print("-" * len(header))
    ok = True
    for name, x in data.items():
        fits = {"ours ks='data'": ours(x, "data", args.repeat), "ours ks='sup'": ours(x, "sup", args.repeat),
                "powerlaw free": pl[name + "|free"], "powerlaw default": pl[name + "|default"]}  # fmt: skip
        for label, f in fits.items():
            print(f"{name:32} {label:16} {f['xmin']:9.4g} {f['alpha']:7.3f} {f['sigma']:6.3f} {f['n_tail']:6d} "
                  f"{f['D']:6.3f} {1e3 * f['time']:8.1f}")  # fmt: skip
        ref, mine = pl[name + "|free"], fits["ours ks='data'"]
        diff = abs(mine["alpha"] - ref["alpha"])
        agree = diff <= mine["sigma"]
        ok &= agree
        print(f"{'':32} |α_ours − α_powerlaw| = {diff:.2e} ≤ σ = {mine['sigma']:.3f}: {agree}; same xmin: "
              f"{mine['xmin'] == ref['xmin']}; speedup {ref['time'] / mine['time']:.0f}×")  # fmt: skip
    print("all agree within one standard error" if ok else "DISAGREEMENT beyond one standard error")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
