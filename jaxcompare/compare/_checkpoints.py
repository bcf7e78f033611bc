"""Loading users' checkpoints (orbax, flax msgpack, safetensors, ``.npz``) as parameter pytrees; never pickle.

A loaded checkpoint is a nested ``dict`` of NumPy arrays (sequences in the saved tree come back as dicts keyed
``"0"``, ``"1"``, ... for msgpack/npz/safetensors, as flax's own ``msgpack_restore`` does). The format is chosen by
the path: a directory is an orbax checkpoint; files by extension (``.npz``; ``.msgpack``/``.flax``; ``.safetensors``),
and a file with another extension by its first bytes (zip → npz, safetensors header, msgpack map).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from ._safetensors import read_safetensors, write_safetensors

__all__ = ["load_checkpoint", "load_checkpoints", "save_params", "flatten_params", "CHECKPOINT_FORMATS"]

#: Formats :func:`load_checkpoint` reads, with the file extensions that select them.
CHECKPOINT_FORMATS = {
    "npz": (".npz",),
    "msgpack": (".msgpack", ".flax"),
    "safetensors": (".safetensors",),
    "orbax": (),  # a directory
}
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "checkpoint")
_FILE_EXTS = tuple(e for exts in CHECKPOINT_FORMATS.values() for e in exts)


def flatten_params(tree: Any, *, sep: str = "/") -> dict[str, Any]:
    """``{"a/b": leaf}`` from a pytree of arrays (dict keys, sequence indices and attribute names joined by ``sep``;
    an ``nnx.state(model)`` is named as its ``nnx.to_pure_dict``: ``query/kernel``, not ``query/kernel/value``).

    Example:
      >>> import numpy as np
      >>> sorted(flatten_params({"dense": {"w": np.ones(2), "b": np.zeros(1)}}))
      ['dense/b', 'dense/w']
    """
    import jax

    from .._paths import key_parts

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = key_parts(path)  # an nnx state's leaves named as in its pure dict ("query/kernel")
        for part in parts:
            if sep in part:
                raise ValueError(f"params key {part!r} contains the separator {sep!r}; rename it to save the tree.")
        out[sep.join(parts) if parts else "value"] = leaf
    return out


def _unflatten(flat: dict[str, np.ndarray], sep: str, path: str) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, v in flat.items():
        parts = name.split(sep)
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"checkpoint {path}: array {name!r} clashes with an array named by its prefix")
        if parts[-1] in node:
            raise ValueError(f"checkpoint {path}: array {name!r} clashes with a group of the same name")
        node[parts[-1]] = v
    return tree


def _sniff(path: str) -> str | None:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "npz"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < os.path.getsize(path):
        return "safetensors"
    if head[:1] and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "msgpack"
    return None


def _format(path: str) -> str:
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, m)) for m in _ORBAX_MARKERS):
            return "orbax"
        raise ValueError(
            f"checkpoint {path} is a directory but not an orbax checkpoint (none of "
            f"{', '.join(_ORBAX_MARKERS)} in it); pass the directory orbax saved to, or a file"
        )
    ext = os.path.splitext(path)[1].lower()
    for fmt, exts in CHECKPOINT_FORMATS.items():
        if ext in exts:
            return fmt
    fmt = _sniff(path)
    if fmt is None:
        raise ValueError(
            f"checkpoint {path}: unknown format (extension {ext or 'none'!r}); supported: an orbax "
            "directory, .npz, .msgpack/.flax (flax.serialization.to_bytes), .safetensors"
        )
    return fmt


def _load_npz(path: str) -> dict[str, Any]:
    import zipfile

    with open(path, "rb") as f:
        head = f.read(6)
    if head[:4] != b"PK\x03\x04":
        what = (
            "an .npy file (rename it to .npy? a checkpoint is an .npz of named arrays)"
            if head == b"\x93NUMPY"
            else (f"not a zip archive (it starts with {head!r})")
        )
        raise ValueError(f"checkpoint {path} is not a valid .npz file: {what}")
    try:
        with zipfile.ZipFile(path) as zf:
            other = [i.filename for i in zf.infolist() if not i.filename.endswith(".npy")]
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"checkpoint {path} is not a valid .npz file (truncated or corrupt?): {e}") from None
    if other:
        raise ValueError(
            f"checkpoint {path} is a zip archive with members that are not .npy arrays ({other[:3]}): not an "
            ".npz of named arrays (a PyTorch zip checkpoint? convert it with save_params)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.keys()}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ValueError(
                f"checkpoint {path} holds Python objects (pickles are refused); save plain arrays"
            ) from None
        raise ValueError(f"checkpoint {path} is not a valid .npz file: {str(e).splitlines()[0]}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"checkpoint {path} is not a valid .npz file (truncated or corrupt?): {e}") from None
    return _unflatten(flat, "/", path)


_SEP_KEY = "jaxcompare.separator"  # written by save_params: its names are joined by "/" (a "." is part of a key)


def _load_safetensors(path: str) -> dict[str, Any]:
    flat, meta = read_safetensors(path)
    # files of other tools (PyTorch state dicts) join nested names by "."; ours record that they use "/"
    sep = meta.get(_SEP_KEY) or ("/" if any("/" in k for k in flat) else ".")
    return _unflatten(flat, sep, path)


def _load_msgpack(path: str) -> Any:
    try:
        from flax import serialization
    except ImportError:
        raise ImportError(
            f"checkpoint {path} is a flax msgpack file; reading it needs flax: pip install flax "
            "(or pip install 'jaxcompare[demo]')"
        ) from None

    with open(path, "rb") as f:
        raw = f.read()
    try:
        return serialization.msgpack_restore(raw)
    except (ValueError, TypeError, KeyError) as e:  # unpack errors (incomplete input, extra data), bad dtypes
        raise ValueError(f"checkpoint {path} is not a valid flax msgpack file (truncated or corrupt?): {e}") from None


def _load_orbax(path: str) -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError(
            f"checkpoint {path} is an orbax checkpoint; reading it needs orbax-checkpoint: "
            "pip install orbax-checkpoint (flax brings it: pip install 'jaxcompare[demo]')"
        ) from None
    try:
        return ocp.StandardCheckpointer().restore(os.path.abspath(path))
    except Exception as e:  # noqa: BLE001 - orbax raises many types for corrupt directories; reported as one error
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {path} could not be restored by orbax: {msg}") from None


def _to_numpy_tree(tree: Any, path: str) -> Any:
    if isinstance(tree, dict):
        if not tree:
            raise ValueError(f"checkpoint {path} holds an empty group of parameters")
        return {str(k): _to_numpy_tree(v, path) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _to_numpy_tree(v, path) for i, v in enumerate(tree)}
    a = np.asarray(tree)
    if a.dtype.kind not in "biuf" and a.dtype.name != "bfloat16":
        raise ValueError(f"checkpoint {path} holds a non-numeric leaf of dtype {a.dtype}")
    return a


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Parameters of one checkpoint as a nested dict of NumPy arrays.

    Formats: an orbax checkpoint (the directory passed to ``orbax.checkpoint.StandardCheckpointer().save``; needs
    ``orbax-checkpoint``), flax msgpack (``flax.serialization.to_bytes`` output, ``.msgpack``/``.flax``; needs flax),
    safetensors (read by a strict built-in reader; names split on ``/`` if any name has one, else on ``.``) and
    ``.npz`` of arrays with ``/``-joined names (read with ``allow_pickle=False``). Pickles are never read.

    Args:
      path: a checkpoint file or orbax directory.

    Returns:
      The saved tree as nested dicts of NumPy arrays, exactly as saved (a tree saved as ``{"params": ...}`` keeps
      that key; lists become dicts keyed ``"0"``, ``"1"``, ...).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: unknown format, a truncated or corrupt file, NaN/inf parameters, or no arrays; the message names
        the file.

    Example:
      >>> import os, tempfile, numpy as np
      >>> p = os.path.join(tempfile.mkdtemp(), "model.npz")
      >>> _ = save_params({"dense": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}}, p)
      >>> tree = load_checkpoint(p)
      >>> sorted(tree["dense"]), tree["dense"]["kernel"].shape
      (['bias', 'kernel'], (2, 3))
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    fmt = _format(path)
    tree = {"npz": _load_npz, "safetensors": _load_safetensors, "msgpack": _load_msgpack, "orbax": _load_orbax}[fmt](
        path
    )
    if not isinstance(tree, (dict, list, tuple)):
        raise ValueError(f"checkpoint {path} ({fmt}) holds a {type(tree).__name__}, not a tree of arrays")
    tree = _to_numpy_tree(tree, path)
    flat = flatten_params(tree)
    if not flat:
        raise ValueError(f"checkpoint {path} holds no arrays")
    for name, leaf in flat.items():
        if leaf.dtype.kind == "f" or leaf.dtype.name == "bfloat16":
            bad = ~np.isfinite(leaf.astype(np.float32))
            if bad.any():
                raise ValueError(f"checkpoint {path}: parameter {name!r} has {int(bad.sum())} NaN/inf values")
    return tree


def _entries(paths_or_dir: Any) -> list[str]:
    if isinstance(paths_or_dir, (str, os.PathLike)):
        d = os.fspath(paths_or_dir)
        if not os.path.exists(d):
            raise FileNotFoundError(f"checkpoints not found: {d}")
        if not os.path.isdir(d):
            return [d]
        names = sorted(n for n in os.listdir(d) if not n.startswith((".", "_")))
        # one orbax checkpoint; a file named "checkpoint" (TensorFlow's index) beside checkpoint files is not one
        strong = any(os.path.exists(os.path.join(d, m)) for m in _ORBAX_MARKERS if m != "checkpoint")
        files = [n for n in names if os.path.splitext(n)[1].lower() in _FILE_EXTS]
        if strong or (os.path.exists(os.path.join(d, "checkpoint")) and not files):
            return [d]
        if not names:
            raise ValueError(f"checkpoint directory {d} is empty (one entry per model expected)")
        return [os.path.join(d, n) for n in names]
    paths = [os.fspath(p) for p in paths_or_dir]
    if not paths:
        raise ValueError("paths_or_dir must name at least one checkpoint, got an empty list")
    return paths


def _name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in (".npz", ".msgpack", ".flax", ".safetensors") else base


def load_checkpoints(paths_or_dir: Any) -> list[tuple[str, dict[str, Any]]]:
    """Several checkpoints of one architecture, validated against the first: ``[(name, params), ...]``.

    Args:
      paths_or_dir: a directory holding one entry per model (files or orbax directories; names starting with
        ``.`` or ``_`` are skipped; sorted by name), or a list of checkpoint paths (kept in order).

    Returns:
      ``(name, params)`` pairs; the name is the file name without its extension (the directory name for orbax).

    Raises:
      ValueError: a checkpoint's tree differs from the first one's: a missing or extra leaf, or a different shape;
        one message naming the checkpoint and the leaf path. Duplicate names. Errors of :func:`load_checkpoint`.

    Example:
      >>> import os, tempfile, numpy as np
      >>> d = tempfile.mkdtemp()
      >>> for i in range(3):
      ...     _ = save_params({"w": np.full((2, 2), float(i))}, os.path.join(d, f"seed{i}.npz"))
      >>> [(name, float(p["w"][0, 0])) for name, p in load_checkpoints(d)]
      [('seed0', 0.0), ('seed1', 1.0), ('seed2', 2.0)]
    """
    paths = _entries(paths_or_dir)
    out: list[tuple[str, dict[str, Any]]] = []
    ref_flat: dict[str, np.ndarray] = {}
    for i, p in enumerate(paths):
        tree = load_checkpoint(p)
        flat = flatten_params(tree)
        name = _name(p)
        if any(name == n for n, _ in out):
            raise ValueError(f"two checkpoints are both named {name!r} ({p}); names must be unique")
        if i == 0:
            ref_flat = flat
        else:
            first = paths[0]
            missing = [k for k in ref_flat if k not in flat]
            if missing:
                raise ValueError(
                    f"checkpoint {p} lacks parameter {missing[0]!r} that the first checkpoint {first} "
                    f"has ({len(missing)} missing in all); all models must share one architecture"
                )
            extra = [k for k in flat if k not in ref_flat]
            if extra:
                raise ValueError(
                    f"checkpoint {p} has parameter {extra[0]!r} that the first checkpoint {first} "
                    f"lacks ({len(extra)} extra in all); all models must share one architecture"
                )
            for k, v in flat.items():
                if v.shape != ref_flat[k].shape:
                    raise ValueError(
                        f"checkpoint {p}: parameter {k!r} has shape {v.shape}, but {ref_flat[k].shape} "
                        f"in the first checkpoint {first}"
                    )
        out.append((name, tree))
    return out


def save_params(params: Any, path: str | os.PathLike) -> str:
    """Write a parameter pytree as ``.npz`` or ``.safetensors`` (chosen by the extension), names joined by ``/``.

    Both files are read back by :func:`load_checkpoint` into the same nested dicts (sequences become dicts keyed
    ``"0"``, ``"1"``, ...). Arrays are stored in their dtype; nothing is pickled.

    Args:
      params: a pytree of arrays (NumPy or JAX).
      path: output file ending in ``.npz`` or ``.safetensors`` (its directory is created if needed).

    Returns:
      The path written.

    Example:
      >>> import os, tempfile, numpy as np
      >>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
      >>> save_params({"layers": [{"w": np.eye(2, dtype=np.float32)}]}, p) == p
      True
      >>> load_checkpoint(p)["layers"]["0"]["w"].tolist()
      [[1.0, 0.0], [0.0, 1.0]]
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".safetensors"):
        raise ValueError(f"path must end in .npz or .safetensors, got {path!r}")
    flat = {k: np.asarray(v) for k, v in flatten_params(params).items()}
    if not flat:
        raise ValueError("params holds no arrays")
    for k, v in flat.items():
        if v.dtype.kind not in "biuf" and v.dtype.name != "bfloat16":
            raise TypeError(f"params leaf {k!r} has dtype {v.dtype}; only numeric arrays can be saved")
        if v.dtype.kind == "f" or v.dtype.name == "bfloat16":
            bad = int(np.sum(~np.isfinite(v.astype(np.float32))))
            if bad:  # load_checkpoint refuses them: a file that cannot be read back is not written
                raise ValueError(f"params leaf {k!r} has {bad} NaN/inf values; a checkpoint must be finite")
        if ext == ".npz" and v.dtype.name == "bfloat16":
            raise TypeError(
                f"params leaf {k!r} is bfloat16, which .npz cannot hold (NumPy has no such dtype); save to "
                ".safetensors, or cast to float32 first"
            )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext == ".npz":
        with open(path, "wb") as f:
            np.savez(f, **flat)
    else:
        write_safetensors(flat, path, metadata={_SEP_KEY: "/"})
    return path
