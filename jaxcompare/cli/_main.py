"""``jaxcompare`` command line: ``demo``, ``alpha``, ``lwr``, ``ntk``.

Errors in user input (files, shapes, values) print one line ``jaxcompare <command>: error: ...`` on stderr and exit
with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from ._io import CLIError, load_array, load_matrix, load_params

__all__ = ["main", "build_parser"]


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _level(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxcompare", description="Compare trained neural networks (JAX).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,alpha,lwr,ntk}")

    d = sub.add_parser("demo", help="run the complete comparison study on built-in data and write a report",
                       description="Train digit-classifier ensembles, compare them with α̂ and classic metrics, fit "
                                   "kernel surrogates, simulate linear-width spectra, look through the embedding "
                                   "microscope; write OUT/index.html and OUT/results.json.")
    d.add_argument("--out", default="report", help="output directory (default: report)")
    d.add_argument("--quick", action="store_true", help="small sizes (about a minute): for a first look and tests")
    d.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0); same seed, same report numbers")
    d.add_argument("--sections", default=None,
                   help="comma-separated subset of: ensembles,surrogates,lwr,microscope (default: all)")

    a = sub.add_parser("alpha", help="α̂ of candidate models against a reference ensemble, from score files",
                       description="Scores are scalar soft decisions (e.g. logit gaps) on the same test points: "
                                   "one row per model, one column per test point (.npz, .npy or .csv).")
    a.add_argument("--candidates", required=True, help="candidate scores (models × points)")
    a.add_argument("--reference", required=True, help="reference-ensemble scores (models × points)")
    a.add_argument("--key", default=None, help="array name inside .npz files holding several arrays")
    a.add_argument("--level", type=_level, default=0.01, help="KS acceptance level of the threshold (default 0.01)")
    a.add_argument("--threshold-method", choices=["dkw", "asymptotic"], default="dkw",
                   help="KS threshold: two-sample DKW bound (published) or asymptotic critical value")
    a.add_argument("--bootstrap", type=int, default=100,
                   help="bootstrap rounds of the published protocol (default 100); 0 = one exact α̂ on all points "
                        "against the pooled reference")
    a.add_argument("--seed", type=int, default=0, help="PRNG seed of the bootstrap (default 0)")
    a.add_argument("--out", default=None, help="write results as JSON to this file")

    lw = sub.add_parser("lwr", help="simulate the linear-width two-layer network and plot its spectra",
                        description="Train a two-layer network in the linear-width regime and write its weight, CK "
                                    "and NTK spectra beside the random-matrix limits.")
    lw.add_argument("--n", type=_positive_int, default=800, help="samples")
    lw.add_argument("--d", type=_positive_int, default=400, help="input dimension")
    lw.add_argument("--h", type=_positive_int, default=600, help="width")
    lw.add_argument("--optimizer", choices=["gd", "sgd", "adam"], default="gd")
    lw.add_argument("--lr", type=float, default=None,
                    help="learning rate in units of the loss ||y - f||^2/(2n) (default: a stable GD step, 0.2 n)")
    lw.add_argument("--steps", type=_positive_int, default=100)
    lw.add_argument("--batch-size", type=_positive_int, default=None, help="minibatch size for sgd/adam")
    lw.add_argument("--seed", type=int, default=0)
    lw.add_argument("--out", default="lwr-out", help="output directory (spectra.png, results.json)")

    nt = sub.add_parser("ntk", help="compute a kernel of your own model on your data",
                        description="MODEL is 'module:function' with function(params, x) -> logits (N, C); the "
                                    "module is imported from the current directory or PYTHONPATH. PARAMS is an .npz "
                                    "of named arrays (nested names joined by '/'). DATA is .npy/.npz (N, ...).")
    nt.add_argument("--model", required=True, help="module:function, the forward pass apply_fn(params, x)")
    nt.add_argument("--params", required=True, help="parameters (.npz)")
    nt.add_argument("--data", required=True, help="inputs x1 (.npy/.npz/.csv)")
    nt.add_argument("--data2", default=None, help="inputs x2 (default: x1)")
    nt.add_argument("--kernel", choices=["trace", "trace0", "pseudo", "full", "proj-trace", "proj-pseudo"],
                    default="trace", help="trace = cosine-normalized trNTK; trace0 = unnormalized (sum over classes)")
    nt.add_argument("--dim", type=_positive_int, default=1024, help="projection dimension for proj-* kernels")
    nt.add_argument("--block-size", type=_positive_int, default=256, help="tile size (memory bound)")
    nt.add_argument("--implementation", default="auto")
    nt.add_argument("--seed", type=int, default=0, help="PRNG seed for projections")
    nt.add_argument("--out", required=True, help="output kernel (.npy)")
    return p


def _cmd_demo(args) -> int:
    from ._study import SECTIONS, run_study

    sections = None
    if args.sections:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        bad = [s for s in sections if s not in SECTIONS]
        if bad:
            raise CLIError(f"unknown section(s) {bad}; choose from {SECTIONS}")
    path = run_study(args.out, quick=args.quick, seed=args.seed, sections=sections)
    print(f"report written to {path} (numbers in {os.path.join(args.out, 'results.json')})")
    return 0


def _cmd_alpha(args) -> int:
    import jax
    import numpy as np

    import jaxcompare as jc

    cand = load_matrix(args.candidates, "candidates", key=args.key)
    ref = load_matrix(args.reference, "reference", key=args.key)
    if cand.shape[1] != ref.shape[1]:
        raise CLIError(f"candidates and reference must score the same test points: {cand.shape[1]} vs "
                       f"{ref.shape[1]} columns")
    if args.bootstrap < 0:
        raise CLIError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    out: dict[str, Any] = {"n_candidates": cand.shape[0], "n_reference": ref.shape[0], "n_points": cand.shape[1]}
    if args.bootstrap == 0:
        n = cand.shape[1]
        thr = jc.ks_threshold(n, n, args.level, method=args.threshold_method)
        pooled = ref.reshape(-1)
        alphas = np.asarray(jax.vmap(lambda c: jc.alpha_hat(c, pooled, threshold=thr))(cand))
        out.update(threshold=float(thr), alpha_hat=alphas.tolist(), protocol="exact, all points, pooled reference")
    else:
        if cand.shape[1] < 4:
            raise CLIError("the bootstrap needs at least 4 test points; use --bootstrap 0")
        scores = np.concatenate([cand, ref])
        res = jc.ensemble_alpha_hat(scores, key=jax.random.key(args.seed), candidates=np.arange(cand.shape[0]),
                                    reference=np.arange(cand.shape[0], scores.shape[0]), n_boot=args.bootstrap,
                                    level=args.level, method=args.threshold_method)
        alphas = np.asarray(res.alpha_hat)
        out.update(threshold=float(res.threshold), alpha_hat=alphas.tolist(),
                   alpha_hat_sd=np.asarray(res.boot).std(axis=1).tolist(),
                   protocol=f"bootstrap ({args.bootstrap} rounds, disjoint halves of size {res.sample_size})")
    print(f"threshold δ = {out['threshold']:.5f}  ({out['protocol']})")
    print(f"{'candidate':>9}  {'alpha_hat':>9}")
    for i, a_ in enumerate(out["alpha_hat"]):
        print(f"{i:>9}  {a_:>9.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def _cmd_lwr(args) -> int:
    import jax
    import numpy as np

    from .. import lwr
    from ._report import to_jsonable

    try:
        cfg = lwr.LWRConfig(n=args.n, d=args.d, h=args.h)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    lr = args.lr if args.lr is not None else 0.2 * args.n
    if args.optimizer == "sgd" and args.batch_size is None:
        raise CLIError("--optimizer sgd needs --batch-size")
    kd, kp, kt = jax.random.split(jax.random.key(args.seed), 3)
    data = lwr.sample_data(kd, cfg)
    params = lwr.init_params(kp, cfg)
    try:
        res = lwr.train(kt, params, data, cfg, optimizer=args.optimizer, lr=lr, steps=args.steps,
                        batch_size=args.batch_size, record_every=max(1, args.steps // 5))
    except FloatingPointError as e:
        raise CLIError(str(e)) from None
    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    fig = lwr.plot_spectra_grid({args.optimizer: res}, cfg)
    fig.savefig(os.path.join(args.out, "spectra.png"), dpi=110, bbox_inches="tight")
    h = res.history
    summary = {"config": dict(n=args.n, d=args.d, h=args.h, optimizer=args.optimizer, lr=lr, steps=args.steps),
               "history": to_jsonable(h)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f)
    top = np.asarray(h.eig_weights)[-1][:3] if hasattr(h, "eig_weights") else None
    print(f"wrote {os.path.join(args.out, 'spectra.png')} and results.json"
          + (f"; top eigenvalues of W^T W/h at the end: {np.round(top, 3).tolist()}" if top is not None else ""))
    return 0


def _import_model(spec: str):
    if ":" not in spec:
        raise CLIError(f"--model must be 'module:function', got {spec!r}")
    mod_name, fn_name = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise CLIError(f"could not import module {mod_name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - user code
        raise CLIError(f"importing {mod_name!r} raised {type(e).__name__}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        raise CLIError(f"module {mod_name!r} has no function {fn_name!r}")
    return fn


def _cmd_ntk(args) -> int:
    import jax
    import numpy as np

    import jaxcompare as jc

    apply_fn = _import_model(args.model)
    params = load_params(args.params)
    x1 = load_array(args.data, "data")
    x2 = load_array(args.data2, "data2") if args.data2 else None
    proj = None
    if args.kernel.startswith("proj-"):
        proj = jc.random_projection(jax.random.key(args.seed), args.dim)
    builders = {
        "trace": lambda: jc.trace_ntk(apply_fn, implementation=args.implementation),
        "trace0": lambda: jc.trace_ntk(apply_fn, normalize=False, implementation=args.implementation),
        "pseudo": lambda: jc.pseudo_ntk(apply_fn, implementation=args.implementation),
        "full": lambda: jc.empirical_ntk(apply_fn, implementation=args.implementation),
        "proj-trace": lambda: jc.trace_ntk(apply_fn, projection=proj),
        "proj-pseudo": lambda: jc.pseudo_ntk(apply_fn, normalize=True, projection=proj),
    }
    kfn = jc.batched(builders[args.kernel](), block_size=args.block_size)
    k = np.asarray(kfn(params, x1, x2))
    out = args.out if args.out.endswith(".npy") else args.out + ".npy"
    np.save(out, k)
    print(f"wrote {out}: {args.kernel} kernel of shape {k.shape}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = {"demo": _cmd_demo, "alpha": _cmd_alpha, "lwr": _cmd_lwr, "ntk": _cmd_ntk}[args.command]
    try:
        return cmd(args)
    except CLIError as e:
        print(f"jaxcompare {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FloatingPointError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"jaxcompare {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxcompare {args.command}: interrupted", file=sys.stderr)
        return 130
