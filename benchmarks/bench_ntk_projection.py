"""Error of the cosine-normalized projected trNTK against the exact one, as a function of the projected dimension,
for the dense Rademacher/Gaussian projections (forward-mode, ``dim`` passes), the sparse JL sketch and the
Kronecker-factored projection; MLP 784-512-512-10 (bench_ntk_models, float32, exact kernel: structured).

    python benchmarks/bench_ntk_projection.py                 # N = 64, dims 64..4096, 3 keys each
    python benchmarks/bench_ntk_projection.py --n 128 --keys 5

Columns: mean and max over the off-diagonal entries of |cos_proj - cos_exact| (mean over keys), mean |Δ| · √k
(constant when the error decays like 1/√k, as Johnson–Lindenstrauss predicts), mean |Δ| · k (the spec's
``a`` in ``|Δcos| ≈ a / k``), and the time of one projected kernel (after compilation).
For the Kronecker projection ``dim`` is its total feature dimension (sum over layers of k_in·k_out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ntk_models as models  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxcompare as jc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 256, 1024, 4096])
    args = ap.parse_args()
    f = models.mlp_apply
    params = jax.tree_util.tree_map(jnp.asarray, models.mlp_init(0))
    x = jnp.asarray(models.inputs("mlp", args.n))
    exact = np.asarray(jc.trace_ntk(f, implementation="structured")(params, x))
    iu = np.triu_indices(args.n, 1)

    def kron(key, dim):
        # split dim over the three layers' factors: k_in = k_out = sqrt(dim / 3), the last layer's out factor is
        # its 10 classes (exact)
        k = max(1, int(round(np.sqrt(dim / 3))))
        return jc.kronecker_projection(key, k, k)

    makers = {
        "rademacher": lambda key, d: jc.random_projection(key, d, "rademacher"),
        "gaussian": lambda key, d: jc.random_projection(key, d, "gaussian"),
        "sparse (nnz=1)": lambda key, d: jc.random_projection(key, d, "sparse"),
        "kronecker": kron,
    }
    print(f"MLP 784-512-512-10, N = {args.n}, float32, {args.keys} keys per cell")
    print(
        f"{'projection':16} {'dim':>6} {'mean|Δcos|':>11} {'max|Δcos|':>10} {'mean·√k':>8} {'mean·k':>8} {'time s':>8}"
    )
    for name, make in makers.items():
        for d in args.dims:
            errs, maxs, times = [], [], []
            dim = d
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
            m = float(np.mean(errs))
            print(
                f"{name:16} {dim:>6} {m:11.4f} {np.mean(maxs):10.4f} {m * np.sqrt(dim):8.2f} {m * dim:8.1f} "
                f"{np.min(times):8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
