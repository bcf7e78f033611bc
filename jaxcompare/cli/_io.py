"""Reading users' files for the CLI: scores (.npz/.npy/.csv), parameter pytrees (.npz), data arrays."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["CLIError", "load_matrix", "load_params", "load_array"]


class CLIError(Exception):
    """An error the CLI reports as one line on stderr (exit status 2)."""


def _exists(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{what} must be a file, got a directory: {path}")


def load_array(path: str, what: str, *, key: str | None = None) -> np.ndarray:
    """One array from ``.npy``, ``.npz`` (the only array or ``key``; pickles refused) or ``.csv`` (numbers only)."""
    _exists(path, what)
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            a = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                if key is not None:
                    if key not in names:
                        raise CLIError(f"{what} file {path} has no array {key!r}; it has {names}")
                    a = z[key]
                elif len(names) == 1:
                    a = z[names[0]]
                else:
                    raise CLIError(f"{what} file {path} holds several arrays {names}; name one with --key")
        elif ext in (".csv", ".txt"):
            a = np.loadtxt(path, delimiter="," if ext == ".csv" else None, ndmin=2)
        else:
            raise CLIError(f"{what} file must be .npy, .npz or .csv, got {path!r}")
    except CLIError:
        raise
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "pickle" in msg.lower():
            raise CLIError(f"{what} file {path} contains Python objects (pickles are refused); save plain arrays")
        raise CLIError(f"{what} file {path} could not be read as numbers: {msg}") from None
    except (OSError, EOFError) as e:
        raise CLIError(f"{what} file {path} could not be read: {e}") from None
    if a.dtype.kind not in "biuf":
        raise CLIError(f"{what} file {path} must hold numbers, got dtype {a.dtype}")
    if a.size == 0:
        raise CLIError(f"{what} file {path} is empty")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise CLIError(f"{what} file {path} has {int(np.sum(~np.isfinite(a)))} NaN/inf values; remove them first")
    return a


def load_matrix(path: str, what: str, *, key: str | None = None) -> np.ndarray:
    """A ``(models, points)`` score matrix; a single row ``(points,)`` becomes ``(1, points)``."""
    a = load_array(path, what, key=key).astype(np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise CLIError(f"{what} must be a 2-D array (models × test points), got shape {a.shape}")
    return a


def load_params(path: str) -> dict[str, Any]:
    """A parameter pytree from ``.npz``: keys with ``/`` become nested dicts (``"Dense_0/kernel"``)."""
    _exists(path, "params")
    if not path.lower().endswith(".npz"):
        raise CLIError(f"params must be an .npz file of named arrays (nested names joined by '/'), got {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.keys()}
    except ValueError as e:
        raise CLIError(f"params file {path} could not be read (pickles are refused): {e}") from None
    except (OSError, EOFError) as e:
        raise CLIError(f"params file {path} could not be read: {e}") from None
    if not flat:
        raise CLIError(f"params file {path} holds no arrays")
    tree: dict[str, Any] = {}
    for k, v in flat.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise CLIError(f"params array {k!r} in {path} has NaN/inf values")
        node = tree
        parts = k.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise CLIError(f"params file {path}: {k!r} clashes with an array of the same prefix")
        node[parts[-1]] = v
    return tree
