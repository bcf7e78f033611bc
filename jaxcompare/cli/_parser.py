"""The argument parser of ``jaxcompare``: every option with its default and choices in ``--help``."""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["build_parser", "DEPRECATED_KERNELS", "OPTIMIZER_DEFAULT_LR", "SEED_MAX"]

#: CLI kernel names before the registry (0.1), accepted with a note on stderr
DEPRECATED_KERNELS = {
    "trace": "trntk",
    "trace0": "trntk0",
    "pseudo": "pntk0",
    "full": "entk",
    "proj-trace": "proj_trntk",
    "proj-pseudo": "proj_pntk",
}
#: default ``--lr`` of ``jaxcompare lwr`` per optimizer, in units of the loss ‖y − f‖²/(2n); "0.2n" = 0.2 × n
OPTIMIZER_DEFAULT_LR = {"gd": "0.2n", "sgd": "0.05n", "adam": "0.01"}
SEED_MAX = 2**63 - 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``jaxcompare <command>: error: ...``, exit 2) instead of usage + error."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


class _Formatter(argparse.HelpFormatter):
    """Every option's default in its help line, unless it has none (``None``/``False``) or the text states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        if "default" in text:
            return text
        return text + " (default: %(default)s)"


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _seed(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**63 - 1], got {s!r}") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**63 - 1], got {v}")
    return v


def _level(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s}")
    return v


def _kernel_name(s: str) -> str:
    if s in DEPRECATED_KERNELS:
        new = DEPRECATED_KERNELS[s]
        sys.stderr.write(f"jaxcompare ntk: note: --kernel {s} is deprecated; it is now called {new}\n")
        return new
    return s


def build_parser() -> argparse.ArgumentParser:
    from .._precision import PRECISIONS
    from ..metrics._scores import SCORE_REDUCTIONS
    from ..ntk import KERNELS
    from ..study import SECTIONS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        help="on failure, print the full traceback (e.g. of your own model code) before the one-line error",
    )
    p = _Parser(
        prog="jaxcompare",
        description="Compare trained neural networks (JAX).",
        epilog="Exit status: 0 success; 1 the run finished but its result is flagged (lwr: training diverged, "
        "the loss grew or the GD step exceeds the stability bound); 2 invalid input or any other failure (one line "
        "on stderr; --debug for the traceback).",
        formatter_class=_Formatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,alpha,lwr,ntk,compare,spectra}")

    def add(name, **kw):
        return sub.add_parser(name, parents=[common], formatter_class=_Formatter, **kw)

    d = add(
        "demo",
        help="run the complete comparison study on built-in data and write a report",
        description="Train digit-classifier ensembles, compare them with α̂ and classic metrics, fit kernel "
        "surrogates, simulate linear-width spectra, look through the embedding microscope; write "
        "OUT/index.html, OUT/results.json and OUT/figures/.",
    )
    d.add_argument("--out", default="report", help="output directory")
    d.add_argument("--quick", action="store_true", help="small sizes (about a minute): for a first look and tests")
    d.add_argument("--seed", type=_seed, default=0, help="PRNG seed; same seed, same report numbers")
    d.add_argument("--sections", default=None, help=f"comma-separated subset of: {','.join(SECTIONS)} (default: all)")

    a = add(
        "alpha",
        help="α̂ of candidate models against a reference ensemble, from score or logit files",
        description="Inputs are the models' outputs on the same test points (.npz, .npy or .csv): scalar scores "
        "(models × points, e.g. logit gaps) or logits (models × points × classes), reduced to one "
        "score per point with --score. With --labels, accuracy, churn against the reference "
        "ensemble's label and ECE are printed beside α̂. Results and every setting go to --out.",
    )
    a.add_argument("--candidates", required=True, help="candidate scores (M, T) or logits (M, T, C)")
    a.add_argument("--reference", required=True, help="reference-ensemble scores (R, T) or logits (R, T, C)")
    a.add_argument(
        "--key",
        default=None,
        help="array name inside both .npz files (shortcut for --candidates-key and --reference-key together)",
    )
    a.add_argument("--candidates-key", default=None, help="array name inside the candidates .npz")
    a.add_argument("--reference-key", default=None, help="array name inside the reference .npz")
    a.add_argument(
        "--labels",
        default=None,
        help="true labels (T,) of the test points: enables accuracy, churn and ECE, and the label-based scores",
    )
    a.add_argument("--labels-key", default=None, help="array name inside the labels .npz")
    a.add_argument(
        "--score",
        choices=SCORE_REDUCTIONS,
        default=None,
        help="reduction of (M, T, C) logits to scores: margin l_y - max_{c!=y} l_c, logit_gap (label-"
        "free: l1 - l0 for 2 classes, top-2 gap otherwise), true_logprob log softmax(l)_y "
        "(default: margin with --labels, logit_gap without)",
    )
    a.add_argument("--level", type=_level, default=0.01, help="KS acceptance level of the threshold")
    a.add_argument(
        "--threshold-method",
        choices=["dkw", "asymptotic"],
        default="dkw",
        help="KS threshold: two-sample DKW bound (published) or asymptotic critical value",
    )
    a.add_argument(
        "--bootstrap",
        type=_nonneg_int,
        default=100,
        help="bootstrap rounds of the published protocol; 0 = one exact α̂ on all points against the pooled reference",
    )
    a.add_argument("--seed", type=_seed, default=0, help="PRNG seed of the bootstrap")
    a.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="progress bar on stderr (auto: only when stderr is a terminal)",
    )
    a.add_argument("--out", default=None, help="write results and settings as JSON to this file")

    lw = add(
        "lwr",
        help="simulate the linear-width two-layer network and plot its spectra",
        description="Train a two-layer network in the linear-width regime and write its weight, CK and NTK "
        "spectra beside the random-matrix limits. Prints the loss before and after and the "
        "full-batch GD stability bound 2n/λ_max(K_0); a run that diverged, whose loss grew, or (gd) "
        "whose step exceeds the stability bound is flagged on stderr and in results.json and exits "
        "with status 1 (the results are still written).",
        epilog="Default --lr per optimizer (units of the loss ||y - f||^2/(2n)): "
        + ", ".join(f"{k} {v}" for k, v in OPTIMIZER_DEFAULT_LR.items())
        + ". A step above 1000x the stability bound (gd, sgd) or above 1000x the default (adam) is "
        "refused.",
    )
    lw.add_argument("--n", type=_positive_int, default=800, help="samples")
    lw.add_argument("--d", type=_positive_int, default=400, help="input dimension")
    lw.add_argument("--h", type=_positive_int, default=600, help="width")
    lw.add_argument("--optimizer", choices=["gd", "sgd", "adam"], default="gd", help="optimizer")
    lw.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="step size in units of the loss ||y - f||^2/(2n) (default: per optimizer, see below)",
    )
    lw.add_argument("--steps", type=_positive_int, default=100, help="updates")
    lw.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="minibatch size (required by sgd; adam: full batch when omitted)",
    )
    lw.add_argument("--seed", type=_seed, default=0, help="PRNG seed (data, initialization, minibatches)")
    lw.add_argument("--out", default="lwr-out", help="output directory (spectra.png, results.json)")

    names = ", ".join(f"{n} ({info.summary})" for n, info in KERNELS.items())
    nt = add(
        "ntk",
        help="compute a kernel of your own model on your data",
        description="MODEL is 'module:function' with function(params, x) -> logits (N, C) (for --kernel ck: "
        "features (N, D); for em: a list of per-layer outputs); the module is imported from the "
        "current directory or PYTHONPATH. PARAMS is an .npz of named arrays (nested names joined "
        "by '/'; write one with jaxcompare.save_params(params, path)). DATA is .npy/.npz/.csv "
        "(N, ...); a pytree input is an .npz of arrays 'x/<name>' ('x/tokens', 'x/mask' -> a dict; 'x/0', 'x/1' -> "
        f"a tuple). Kernels: {names}.",
        epilog="Old kernel names (deprecated, still accepted): "
        + ", ".join(f"{o} -> {n}" for o, n in DEPRECATED_KERNELS.items())
        + ".",
    )
    nt.add_argument("--model", required=True, help="module:function, the forward pass apply_fn(params, x)")
    nt.add_argument("--params", required=True, help="parameters (.npz)")
    nt.add_argument("--data", required=True, help="inputs x1 (.npy/.npz/.csv)")
    nt.add_argument("--data2", default=None, help="inputs x2 (default: x1)")
    nt.add_argument(
        "--kernel",
        type=_kernel_name,
        choices=list(KERNELS),
        default="trntk",
        help="kernel name of the registry jaxcompare.ntk.KERNELS",
    )
    nt.add_argument("--dim", type=_positive_int, default=1024, help="projection dimension for proj_* kernels")
    nt.add_argument(
        "--projection",
        choices=["structured", "rademacher", "gaussian", "sparse"],
        default="structured",
        help="projection of the proj_* kernels: structured (a sketch from each layer's factors, the fast one; "
        "--dim even) or random_projection's kinds",
    )
    nt.add_argument(
        "--output-probes",
        type=_positive_int,
        default=None,
        help="proj_trntk: trace over the outputs from this many random ±1 combinations of them (even, fewer than "
        "the outputs): one backward pass per probe instead of per output",
    )
    nt.add_argument("--block-size", type=_positive_int, default=256, help="tile size (memory bound)")
    nt.add_argument("--implementation", default="auto", help="NTK implementation of the gradient kernels")
    nt.add_argument("--seed", type=_seed, default=0, help="PRNG seed for projections")
    nt.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="highest",
        help="matmul precision policy (jaxcompare.ntk.precision): highest = full float32 products; high / default "
        "allow TF32 on GPU and bf16 passes on TPU, with float32 accumulation (the same kernel on CPU)",
    )
    nt.add_argument(
        "--out",
        default=None,
        help="output kernel (.npy), replaced only once it is complete (required unless --store is given)",
    )
    nt.add_argument(
        "--store",
        default=None,
        metavar="DIR",
        help="compute the kernel tile by tile into DIR (jaxcompare.kernel_to_disk: kernel.npy with a ledger of "
        "checksums; --block-size rows per tile): an interrupted run is resumed by the same command, and several "
        "processes (--process-index/--process-count) may share DIR",
    )
    nt.add_argument(
        "--process-index", type=_nonneg_int, default=None, help="with --store: this process's share (0-based)"
    )
    nt.add_argument("--process-count", type=_positive_int, default=None, help="with --store: the number of shares")
    nt.add_argument(
        "--overwrite",
        action="store_true",
        help="with --store: start afresh when DIR holds a run of other inputs (otherwise an error)",
    )

    from ._compare import add_parser as add_compare

    add_compare(sub, parents=[common], seed_type=_seed)

    from ._spectra import add_parser as add_spectra

    add_spectra(sub, parents=[common], formatter_class=_Formatter, seed_type=_seed, positive_int=_positive_int)
    return p
