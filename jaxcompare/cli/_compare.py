"""``jaxcompare compare``: compare your own checkpoints on your data and write a report.

``add_parser(subparsers)`` adds the sub-command; ``run(args)`` executes it. Errors in user input raise
``ValueError`` / ``FileNotFoundError`` with one-line messages (the CLI's ``main`` prints them as
``jaxcompare compare: error: ...`` and exits with status 2).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["add_parser", "run", "model_apply_fn", "load_data", "load_groups"]

_DESCRIPTION = """\
Compare trained models of one architecture on your test data: accuracy, churn against the reference ensemble's
label, ECE, α̂ ± sd (published bootstrap protocol), the models that are atypical and which statistics agree, the
AUROC of each statistic for telling each group from the reference, the similarity of the models' kernels (debiased
CKA with permutation p-values, on --kernel-points test points), kernel surrogates of each model with their
faithfulness and top training-point attributions (when the data has x_train, y_train), and per-layer weight
spectra. Writes
OUT/index.html (self-contained), OUT/results.json (every number and setting), OUT/models.csv, the figures, and
OUT/comparison.json + OUT/arrays.npz (jaxcompare.compare.load_comparison(OUT) reads them back).

--model MODULE:FUNCTION names FUNCTION(params, x) -> (N, C) logits (the module is imported from the current
directory or PYTHONPATH). It may also name a flax module instance: a linen Module is applied as
module.apply({"params": params}, x) (or module.apply(params, x) when the checkpoint's top level has a "params"
key), an nnx Module as nnx.merge(graphdef, params)(x) with params its nnx.to_pure_dict(nnx.state(model)).

Checkpoints: a directory with one entry per model, or files; orbax checkpoint directories, flax msgpack
(.msgpack/.flax, flax.serialization.to_bytes), .safetensors, .npz with '/'-joined names. Never pickle.
--data: .npz with x_test, y_test and optionally x_train, y_train; inputs that are a pytree (tokens and mask, ...)
as the arrays x_test/<name> (x_test/tokens, x_test/mask give {"tokens": ..., "mask": ...}; x_test/0, x_test/1 a
tuple), the same names under x_train/.
--groups: CSV with lines 'checkpoint,group' (checkpoint = file name with or without extension).
"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except ``None`` defaults (required options, or a default the help text states)."""

    def _get_help_string(self, action):
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def add_parser(subparsers: Any, **kwargs: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` sub-command to ``subparsers`` (extra ``kwargs`` go to ``add_parser``, e.g. parents;
    ``seed_type`` validates ``--seed`` as the other commands do)."""
    from ..compare._compare import SECTIONS
    from ..compare._kernels import kernel_names
    from ..metrics._scores import SCORE_REDUCTIONS

    seed_type = kwargs.pop("seed_type", int)

    kwargs.setdefault("formatter_class", _Formatter)
    c = subparsers.add_parser(
        "compare",
        help="compare your own checkpoints on your data and write a report",
        description=_DESCRIPTION,
        **kwargs,
    )
    c.add_argument("--model", required=True, help="MODULE:FUNCTION, the forward pass FUNCTION(params, x) -> logits")
    c.add_argument(
        "--checkpoints",
        required=True,
        nargs="+",
        metavar="PATH",
        help="a directory of checkpoints (one entry per model) or checkpoint paths",
    )
    c.add_argument("--data", required=True, help=".npz with x_test, y_test (optional x_train, y_train)")
    c.add_argument("--groups", default=None, help="CSV 'checkpoint,group' (e.g. the training recipe)")
    c.add_argument("--reference", default=None, help="the reference group (default: the largest)")
    c.add_argument(
        "--sections",
        nargs="+",
        default=None,
        metavar="SECTION",
        help=f"optional sections, any of: {', '.join(SECTIONS)} (default: all)",
    )
    c.add_argument(
        "--score", choices=SCORE_REDUCTIONS, default="margin", help="reduction of the logits to the score α̂ compares"
    )
    c.add_argument("--n-boot", type=int, default=100, help="bootstrap rounds of α̂")
    c.add_argument(
        "--kernel", choices=kernel_names(), default="trntk", help="kernel of the similarity and surrogate sections"
    )
    c.add_argument(
        "--projection",
        choices=["structured", "rademacher", "gaussian", "sparse"],
        default=None,
        help="the kernel sections on projected gradients (proj_trntk / proj_pntk; structured: the sketch from each "
        "layer's factors, the fast one), for models too large for exact kernels; one projection for every model, "
        "drawn from --seed",
    )
    c.add_argument("--dim", type=int, default=1024, help="projection dimension (with --projection)")
    c.add_argument("--kernel-points", type=int, default=128, help="test points the kernels are computed on")
    c.add_argument("--permutations", type=int, default=199, help="permutations of each CKA p-value")
    c.add_argument("--surrogate-train", type=int, default=500, help="training points of the kernel surrogates")
    from ._spectra import add_layout_arguments

    add_layout_arguments(c, defaults=False)  # the spectra section's --conv/--heads/--stacked
    c.add_argument("--batch-size", type=int, default=None, help="evaluate the model on this many points at a time")
    c.add_argument("--seed", type=seed_type, default=0, help="PRNG seed of the bootstrap")
    c.add_argument(
        "--out",
        required=True,
        help="output directory; each model's logits and kernels are kept in OUT/cache as they are computed, so "
        "that a rerun (after an interruption, or with other sections or models) reads them instead of "
        "recomputing them",
    )
    c.add_argument("--no-cache", action="store_true", help="keep nothing in OUT/cache (and read nothing from it)")
    return c


def model_apply_fn(obj: Any) -> Callable[[Any, Any], Any]:
    """``apply_fn(params, x)`` for a function, a flax linen Module or a flax nnx Module (see the command's help)."""
    linen = sys.modules.get("flax.linen")
    nnx = sys.modules.get("flax.nnx")
    if linen is not None and isinstance(obj, linen.Module):
        return lambda p, x: obj.apply(p if "params" in p else {"params": p}, x)
    if nnx is not None and isinstance(obj, nnx.Module):
        import jax

        graphdef, state = nnx.split(obj)

        def apply(p, x):
            s = jax.tree_util.tree_map(lambda a: a, state)  # a fresh State to fill
            nnx.replace_by_pure_dict(s, p)
            return nnx.merge(graphdef, s)(x)

        return apply
    if not callable(obj):
        raise ValueError(
            f"--model must name a function (params, x) -> logits or a flax module, got {type(obj).__name__}"
        )
    return obj


def load_data(path: str) -> dict[str, Any]:
    """``x_test, y_test`` (and ``x_train, y_train`` when present) from an ``.npz`` file (no pickles); a pytree input
    is stored as the arrays ``x_test/<name>`` (``x_test/tokens``, ``x_test/mask`` → ``{"tokens", "mask"}``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data file not found: {path}")
    import zipfile

    try:
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.lib.npyio.NpzFile):
            with z:
                data = {k: z[k] for k in z.keys()}
        else:  # np.load read one .npy array
            data = z
    except ValueError as e:
        raise ValueError(
            f"--data {path} could not be read (an .npz of arrays; pickles are refused): {str(e).splitlines()[0]}"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"--data {path} is not a readable .npz file (damaged or truncated: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"--data {path} holds a single array of shape {data.shape}; expected an .npz with x_test and y_test "
            "(np.savez(path, x_test=..., y_test=...))"
        )
    from ._ntk import load_tree

    for prefix in ("x_test", "x_train"):  # a pytree input: x_test/tokens, x_test/mask (a transformer's inputs)
        names = sorted(k for k in data if k.startswith(prefix + "/"))
        if names and prefix in data:
            raise ValueError(f"--data {path} has both an array {prefix!r} and arrays {names}: keep one of them")
        if names:
            data[prefix] = load_tree(f"--data {path}", names, prefix, data.__getitem__)
    missing = [k for k in ("x_test", "y_test") if k not in data]
    if missing:
        raise ValueError(f"--data {path} lacks {', '.join(missing)}; it has {sorted(data)}")
    if ("x_train" in data) != ("y_train" in data):
        raise ValueError(f"--data {path} must hold both x_train and y_train, or neither")
    return {k: data[k] for k in ("x_test", "y_test", "x_train", "y_train") if k in data}


def load_groups(path: str, names: list[str], paths: list[str]) -> list[str]:
    """The group of each checkpoint from a ``checkpoint,group`` CSV (a header line ``checkpoint,group`` is skipped)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--groups file not found: {path}")
    table: dict[str, str] = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f), 1):
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 2:
                raise ValueError(f"--groups {path} line {i}: expected 'checkpoint,group', got {len(row)} fields")
            ck, g = row[0].strip(), row[1].strip()
            if i == 1 and (ck.lower(), g.lower()) == ("checkpoint", "group"):
                continue
            if not ck or not g:
                raise ValueError(f"--groups {path} line {i}: empty checkpoint or group")
            if ck in table:
                raise ValueError(f"--groups {path} line {i}: checkpoint {ck!r} listed twice")
            table[ck] = g
    groups = []
    used = set()
    for name, p in zip(names, paths):
        keys = [k for k in (name, os.path.basename(os.path.normpath(p)), p) if k in table]
        if not keys:
            raise ValueError(f"--groups {path} has no group for checkpoint {name!r} ({p})")
        used.add(keys[0])
        groups.append(table[keys[0]])
    unknown = sorted(set(table) - used)
    if unknown:
        raise ValueError(f"--groups {path} names checkpoint(s) not given: {unknown[:3]}")
    return groups


def _checkpoint_paths(items: list[str]) -> list[str]:
    from ..compare._checkpoints import _entries

    if len(items) == 1:
        return _entries(items[0])
    return _entries(items)


def run(args: argparse.Namespace) -> int:
    """Run ``jaxcompare compare`` (see :func:`add_parser`); returns the exit status (0).

    A missing input file raises ``ValueError`` (the CLI prints ``ValueError`` messages as one line, exit 2).
    """
    try:
        return _run(args)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None


def _run(args: argparse.Namespace) -> int:
    from ..compare._compare import SECTIONS
    from ._io import CLIError, check_output_dir

    if args.n_boot < 1:
        raise ValueError(f"--n-boot must be >= 1, got {args.n_boot}")
    for flag, value, low in (
        ("--kernel-points", args.kernel_points, 4),
        ("--permutations", args.permutations, 1),
        ("--surrogate-train", args.surrogate_train, 2),
    ):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.dim < 2:
        raise ValueError(f"--dim must be >= 2, got {args.dim}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    sections = tuple(SECTIONS)
    if args.sections:
        sections = tuple(s.strip() for item in args.sections for s in item.split(",") if s.strip())
        bad = [s for s in sections if s not in SECTIONS]
        if bad:
            raise ValueError(f"--sections: unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    layout = _layout(args)
    if layout and "spectra" not in sections:
        flags = ", ".join(f"--{k}" for k in layout)
        raise ValueError(f"{flags} apply to the spectra section, which --sections leaves out")
    if args.projection is not None and not {"similarity", "surrogate"} & set(sections):
        raise ValueError(
            "--projection applies to the kernel sections (similarity, surrogate), which --sections leaves out"
        )
    if args.reference is not None and args.groups is None:
        raise ValueError("--reference names a group, so --groups is needed")
    created = not os.path.exists(args.out)
    try:
        check_output_dir(args.out)  # writable, before any work (it failed after the whole comparison)
    except CLIError as e:
        raise ValueError(str(e)) from None  # this command's errors are ValueErrors (see run)
    try:
        return _compare_into(args, sections)
    except BaseException:
        if created and os.path.isdir(args.out) and not os.listdir(args.out):
            os.rmdir(args.out)  # nothing was written: no empty directory left behind
        raise


def _compare_into(args: argparse.Namespace, sections: tuple) -> int:
    from .._validation import key_from_seed
    from ..compare._checkpoints import load_checkpoints
    from ..compare._compare import compare_models
    from ._ntk import import_model

    projection = None
    if args.projection is not None:
        import jax

        from .. import ntk

        pkey = jax.random.fold_in(key_from_seed(args.seed), 1)  # not the bootstrap's stream
        if args.projection == "structured":
            projection = ntk.structured_projection(pkey, args.dim)
        else:
            projection = ntk.random_projection(pkey, args.dim, args.projection)
    apply_fn = model_apply_fn(import_model(args.model))
    data = load_data(args.data)
    paths = _checkpoint_paths(args.checkpoints)
    loaded = load_checkpoints(paths)
    names = [n for n, _ in loaded]
    groups = load_groups(args.groups, names, paths) if args.groups else None
    res = compare_models(
        key_from_seed(args.seed),
        apply_fn,
        loaded,
        data["x_test"],
        data["y_test"],
        x_train=data.get("x_train"),
        y_train=data.get("y_train"),
        groups=groups,
        reference=args.reference,
        score=args.score,
        n_boot=args.n_boot,
        sections=sections,
        kernel=args.kernel,
        n_kernel_points=args.kernel_points,
        n_permutations=args.permutations,
        n_surrogate_train=args.surrogate_train,
        batch_size=args.batch_size,
        spectra_options=(_layout(args) or None) if "spectra" in sections else None,
        cache_dir=None if args.no_cache else os.path.join(args.out, "cache"),
        projection=projection,
    )
    cli = {
        "model": args.model,
        "checkpoints": paths,
        "data": args.data,
        "groups": args.groups,
        "seed": args.seed,
        "out": args.out,
    }
    res = dataclasses.replace(res, settings={**res.settings, "command": cli})
    res.save(args.out)
    index = res.report(args.out)
    for line in res.findings:
        print(line)
    if res.settings.get("cache_read"):
        print(
            f"{res.settings['cache_read']} arrays read from {os.path.join(args.out, 'cache')} (computed by an "
            f"earlier run), {res.settings['cache_computed']} computed"
        )
    print(
        f"report written to {index} (numbers in {os.path.join(args.out, 'results.json')}, table in "
        f"{os.path.join(args.out, 'models.csv')})"
    )
    return 0


def _layout(args) -> dict:
    """The spectra section's layout flags that were given (``--conv``, ``--heads``, ``--stacked``)."""
    return {k: getattr(args, k) for k in ("conv", "heads", "stacked") if getattr(args, k) is not None}
