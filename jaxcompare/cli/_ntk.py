"""``jaxcompare ntk``: a registry kernel of the user's own model on the user's data."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from ._io import CLIError, check_output_file, load_array
from ._params import load_params

__all__ = ["cmd_ntk", "import_model", "load_inputs"]

_INPUT_FORMAT = (
    "name the input array 'x', or the arrays of a pytree input 'x/<name>' ('x/tokens' and 'x/mask' give the dict "
    "{'tokens': ..., 'mask': ...}; 'x/0', 'x/1' give a tuple; deeper names nest), e.g. "
    "np.savez(path, **{'x/tokens': tokens, 'x/mask': mask})"
)


def _as_tree(node):
    """Nested dicts of arrays; a dict whose keys are exactly '0'...'k-1' becomes a tuple."""
    if not isinstance(node, dict):
        return node
    out = {k: _as_tree(v) for k, v in node.items()}
    if set(out) == {str(i) for i in range(len(out))}:  # (as a set: "10" sorts before "2" as a string)
        return tuple(out[str(i)] for i in range(len(out)))
    return out


def load_inputs(path: str, what: str):
    """The inputs ``x`` of ``jaxcompare ntk``: an array from ``.npy``/``.csv``/a one-array ``.npz``, or from an
    ``.npz`` the array ``x`` or the pytree of the arrays ``x/...`` (other arrays in the file, e.g. labels, are
    ignored)."""
    if not path.lower().endswith(".npz") or not os.path.isfile(path):
        return load_array(path, what)
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename[:-4] for i in zf.infolist() if i.filename.endswith(".npy")]
    except (zipfile.BadZipFile, OSError):
        return load_array(path, what)  # its own one-line error
    tree_names = sorted(n for n in names if n.startswith("x/"))
    if "x" in names and tree_names:
        raise CLIError(f"{what} file {path} has both an array 'x' and arrays {tree_names}: keep one of them")
    if "x" in names:
        return load_array(path, what, key="x")
    if not tree_names:
        if len(names) > 1:
            raise CLIError(f"{what} file {path} holds several arrays {sorted(names)}: {_INPUT_FORMAT}")
        return load_array(path, what)
    return load_tree(f"{what} file {path}", tree_names, "x", lambda name: load_array(path, what, key=name))


def load_tree(where: str, names: list[str], prefix: str, get):
    """The pytree of the arrays ``<prefix>/...`` of a file (``x/tokens``, ``x/mask`` → ``{"tokens", "mask"}``;
    ``x/0``, ``x/1`` → a tuple; deeper names nest); ``get(name)`` reads one array, ``where`` names the file."""
    root: dict = {}
    for name in names:
        parts = name.split("/")[1:]
        if not all(parts):
            raise CLIError(f"{where}: array name {name!r} has an empty component")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                clash = "/".join([prefix, *parts[:-1]])
                raise CLIError(f"{where}: array names {name!r} and {clash!r} clash")
        if parts[-1] in node:
            raise CLIError(f"{where}: array name {name!r} clashes with a deeper name")
        node[parts[-1]] = get(name)
    return _as_tree(root)


def import_model(spec: str, flag: str = "--model"):
    """``module:function`` → the function; the module is imported from the current directory or PYTHONPATH."""
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise CLIError(f"{flag} must be 'module:function', got {spec!r}")
    mod_name, fn_name = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        hint = ""
        if mod_name.endswith(".py") or "/" in mod_name or os.sep in mod_name:
            dotted = mod_name.removesuffix(".py").replace(os.sep, ".").replace("/", ".")
            hint = f" (a module name, not a file path: e.g. {dotted}:{fn_name}, from the folder that holds it)"
        raise CLIError(f"{flag}: could not import module {mod_name!r}: {e}{hint}") from None
    except SystemExit as e:
        raise CLIError(
            f"{flag}: importing module {mod_name!r} called sys.exit({e.code!r}); a model module must "
            "define its functions without exiting (guard scripts with if __name__ == '__main__')"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module
        raise CLIError(f"{flag}: importing {mod_name!r} raised {type(e).__name__}: {e}") from e
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        raise CLIError(f"{flag}: module {mod_name!r} has no function {fn_name!r}")
    return fn


def cmd_ntk(args) -> int:
    import numpy as np

    from .. import ntk
    from .._validation import key_from_seed
    from ..ntk._disk import atomic_npy

    if args.store is None:
        if args.out is None:
            raise CLIError("--out is required (a .npy file for the kernel), unless --store DIR keeps it there")
        for flag, v in (("--process-index", args.process_index), ("--process-count", args.process_count)):
            if v is not None:
                raise CLIError(f"{flag} splits the tiles of a store: give --store DIR as well")
        if args.overwrite:
            raise CLIError("--overwrite applies to a --store directory")
    elif (args.process_index is None) != (args.process_count is None):
        raise CLIError("--process-index and --process-count go together (or neither)")
    elif args.process_index is not None and args.process_index >= args.process_count:
        raise CLIError(
            f"--process-index must be below --process-count ({args.process_count}), got {args.process_index}"
        )
    out = None
    if args.out is not None:
        if args.out.endswith(("/", os.sep)) or os.path.isdir(args.out):
            raise CLIError(f"--out must name a file (e.g. kernel.npy), got the directory {args.out}")
        out = args.out if args.out.lower().endswith(".npy") else args.out + ".npy"
        check_output_file(out)
    info = ntk.KERNELS[args.kernel]
    fn = import_model(args.model)
    try:
        params = load_params(args.params)
    except ValueError as e:
        raise CLIError(str(e)) from None
    x1 = load_inputs(args.data, "data")
    x2 = load_inputs(args.data2, "data2") if args.data2 else None
    opts = {}
    if info.needs == "apply_fn" and not info.projected:
        opts["implementation"] = args.implementation
    elif args.implementation != "auto":
        raise CLIError(f"--implementation applies to the unprojected gradient kernels, not to {args.kernel}")
    if info.projected:
        key = key_from_seed(args.seed)
        try:
            if args.projection == "structured":
                proj = ntk.structured_projection(key, args.dim, output_probes=args.output_probes)
            else:
                proj = ntk.random_projection(key, args.dim, args.projection, output_probes=args.output_probes)
        except (TypeError, ValueError) as e:
            raise CLIError(f"--dim/--output-probes: {e}") from None
        opts["projection"] = proj
    elif args.output_probes is not None or args.projection != "structured":
        raise CLIError(f"--projection/--output-probes apply to the proj_* kernels, not to {args.kernel}")
    kernel_fn = ntk.kernel(args.kernel, fn, precision=args.precision, **opts)
    if args.store is not None:
        k = _to_store(args, kernel_fn, params, x1, x2)
        if k is None:
            return 0
        where = f"{os.path.join(args.store, 'kernel.npy')}"
        if out is None:
            print(f"wrote {where}: {args.kernel} ({info.label}) kernel of shape {k.shape}")
            return 0
    else:
        k = np.asarray(ntk.batched(kernel_fn, block_size=args.block_size)(params, x1, x2))
    atomic_npy(Path(out), k)  # an existing file is replaced only by a complete kernel
    print(f"wrote {out}: {args.kernel} ({info.label}) kernel of shape {k.shape}")
    return 0


def _to_store(args, kernel_fn, params, x1, x2):
    """The kernel computed into (or resumed from, or read from) ``--store``; None, after saying what remains,
    while other processes' shares are missing."""
    import sys
    import warnings

    from .. import ntk

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            k = ntk.kernel_to_disk(
                kernel_fn, params, x1, x2, path=args.store, block_size=args.block_size, overwrite=args.overwrite,
                process_index=args.process_index, process_count=args.process_count,
            )  # fmt: skip
    except (ValueError, PermissionError, RuntimeError) as e:  # the store's refusals, in the command's own words
        msg = str(e).replace("pass overwrite=True", "pass --overwrite").replace("overwrite=True", "--overwrite")
        raise type(e)(f"--store: {msg}") from None
    except KeyboardInterrupt:
        print(
            f"jaxcompare ntk: the tiles written so far are kept in {args.store}; rerun the same command to resume",
            file=sys.stderr,
        )
        raise
    missing = [w for w in caught if "not written yet" in str(w.message)]
    for w in caught:
        if w not in missing:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        print(
            f"process {args.process_index} of {args.process_count}: its share of {args.store} is written; "
            + str(missing[0].message).split(";")[0]
            + ". Rerun the other processes, or this command without --process-index/--process-count, to complete "
            "it" + (f" and write {args.out}." if args.out else ".")
        )
        return None
    return k
