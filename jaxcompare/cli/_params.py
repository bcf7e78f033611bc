"""Parameter pytrees as ``.npz`` files of ``/``-joined names: what ``jaxcompare ntk --params`` reads."""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Any

import numpy as np

from ..compare._checkpoints import save_params as _save_params

__all__ = ["save_params", "load_params"]


def save_params(params: Any, path: str) -> str:
    """Save a parameter pytree (nested dicts of arrays, e.g. flax ``variables["params"]``) as ``.npz``.

    Nested keys are joined with ``/`` (``{"Dense_0": {"kernel": w}}`` → ``"Dense_0/kernel"``), the format
    ``jaxcompare ntk --params`` and :func:`load_params` read back into the same nested dicts. Arrays are copied to
    the host with their dtype (float16/32/64, integers, bool); no pickle is written. Save what your
    ``apply_fn(params, x)`` takes: for a flax linen model whose ``apply_fn`` is
    ``lambda p, x: model.apply({"params": p}, x)``, that is ``variables["params"]``.

    The same writer as :func:`jaxcompare.save_params` (which also writes ``.safetensors``), with ``.npz`` appended to
    a path that lacks it.

    Args:
      params: a pytree of arrays (nested dicts, flax ``FrozenDict``; sequences become keys ``"0"``, ``"1"``...).
      path: output file; ``.npz`` is appended when missing.

    Returns:
      The path written.

    Example:
      >>> import os
      >>> from jaxcompare.cli import load_params, save_params
      >>> p = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
      >>> path = save_params(p, "params.npz")
      >>> sorted(np.load(path).keys())
      ['Dense_0/bias', 'Dense_0/kernel']
      >>> load_params(path)["Dense_0"]["kernel"].shape
      (3, 2)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}.")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    return _save_params(params, path)


def load_params(path: str) -> dict[str, Any]:
    """A parameter pytree from ``.npz``: names with ``/`` become nested dicts (``"Dense_0/kernel"``).

    The inverse of :func:`save_params`. Pickled objects are refused; so are NaN/inf values and names that clash
    (``"a"`` and ``"a/b"``).

    Args:
      path: an ``.npz`` file of named numeric arrays.

    Returns:
      Nested ``dict`` of NumPy arrays.

    Raises:
      ValueError: a missing, truncated or corrupt file, pickles, non-numeric or non-finite arrays, clashing names.
    """
    from ._io import CLIError, check_npy_header

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"params file not found: {path}")
    if not path.lower().endswith(".npz"):
        raise ValueError(f"params must be an .npz file of named arrays (nested names joined by '/'), got {path!r}")
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as f:
                    check_npy_header(f, info.file_size, f"params array {info.filename[:-4]!r} in {path}")
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.keys()}
    except CLIError as e:
        raise ValueError(str(e)) from None
    except ValueError as e:
        raise ValueError(
            f"params file {path} could not be read (pickles are refused): {str(e).splitlines()[0]}"
        ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise ValueError(f"params file {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise ValueError(f"params file {path} could not be read: {e.strerror or e}") from None
    if not flat:
        raise ValueError(f"params file {path} holds no arrays")
    tree: dict[str, Any] = {}
    for k, v in flat.items():
        if v.dtype.kind not in "biuf":
            raise ValueError(f"params array {k!r} in {path} must hold numbers, got dtype {v.dtype}")
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ValueError(f"params array {k!r} in {path} has NaN/inf values")
        node = tree
        parts = k.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"params file {path}: {k!r} clashes with an array of the same prefix")
        if parts[-1] in node:
            raise ValueError(f"params file {path}: {k!r} clashes with names below it")
        node[parts[-1]] = v
    return tree
