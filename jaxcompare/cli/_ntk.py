"""``jaxcompare ntk``: a registry kernel of the user's own model on the user's data."""

from __future__ import annotations

import importlib
import os
import sys

from ._io import CLIError, check_output_file, load_array
from ._params import load_params

__all__ = ["cmd_ntk", "import_model"]


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
        raise CLIError(f"{flag}: could not import module {mod_name!r}: {e}") from None
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
    import jax
    import numpy as np

    from .. import ntk

    out = args.out if args.out.endswith(".npy") else args.out + ".npy"
    check_output_file(out)
    info = ntk.KERNELS[args.kernel]
    fn = import_model(args.model)
    try:
        params = load_params(args.params)
    except ValueError as e:
        raise CLIError(str(e)) from None
    x1 = load_array(args.data, "data")
    x2 = load_array(args.data2, "data2") if args.data2 else None
    opts = {}
    if info.needs == "apply_fn" and not info.projected:
        opts["implementation"] = args.implementation
    elif args.implementation != "auto":
        raise CLIError(f"--implementation applies to the unprojected gradient kernels, not to {args.kernel}")
    if info.projected:
        opts["projection"] = ntk.random_projection(jax.random.key(args.seed), args.dim)
    kfn = ntk.batched(ntk.kernel(args.kernel, fn, **opts), block_size=args.block_size)
    k = np.asarray(kfn(params, x1, x2))
    np.save(out, k)
    print(f"wrote {out}: {args.kernel} ({info.label}) kernel of shape {k.shape}")
    return 0
