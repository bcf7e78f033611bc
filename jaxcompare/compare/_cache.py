"""What a comparison computes per model, kept on disk so that a rerun resumes (``compare_models(cache_dir=)``,
``jaxcompare compare``'s ``--out DIR/cache``).

Each entry is an array computed from one model: its logits on the test or training inputs, its kernel on the
similarity points, its surrogate's training and cross kernels. An entry is named by the SHA-256 of everything it
is computed from — what it is (``"logits"``, ``"similarity kernel"``, ...), the kernel's name, the model function
(the jaxprs of ``apply_fn`` and of its pullback ``ct ↦ ∂(ctᵀ apply_fn)/∂params`` on the first model's parameter
shapes and a batch of the inputs, so that a changed custom backward rule is another model; and the code of
``apply_fn``), the jaxcompare and JAX versions, the precision policy, the model's parameters, the input rows and
the batch size — and stored as ``<name>.npy`` beside ``<name>.json`` (what it is, its shape, dtype and CRC-32),
both renamed into place, the JSON last. An entry is trusted only when its array matches its JSON; one that does
not (edited, truncated, from another machine's half-written copy, another format version) is recomputed with a
warning. Entries of other inputs are never overwritten: another model or other data gives other names, and the
directory may be shared by several comparisons (entries are renamed into place, so concurrent writers of one
entry leave one whole copy). Nothing is ever deleted: remove the directory to free its space. The directory is
created when the first entry is stored, so that a comparison refused before any model runs leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .. import __version__
from .._precision import resolve_precision
from ..ntk._disk import atomic_json, atomic_npy, crc, store_dir
from ..ntk._fingerprint import data_fingerprint, model_fingerprint
from ..ntk._inputs import take_rows

__all__ = ["ArrayCache"]

_VERSION = 1


class ArrayCache:
    """Per-model arrays of a comparison in ``directory`` (module docstring); ``None`` keeps nothing."""

    def __init__(self, directory: Any, apply_fn: Callable, params: Any, x: Any, rows: int):
        self.root = None if directory is None else store_dir(directory, "the comparison's cache")
        self.hits = self.misses = 0
        self._digests: dict[int, tuple[Any, str]] = {}
        self._model = ""
        if self.root is None:
            return
        _check_writable(self.root)  # before any model runs, not after the first one
        try:
            self._model = _model_digest(apply_fn, params, take_rows(x, 0, rows))
        except Exception as e:  # a model that cannot be traced on abstract inputs: computed, not cached
            warnings.warn(
                f"cache_dir: the model function could not be traced to name its cache entries "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); nothing is cached in this run.",
                RuntimeWarning,
                stacklevel=3,
            )
            self.root = None

    def digest(self, tree: Any) -> str:
        """SHA-256 of a pytree's structure and bytes, computed once per object (parameters, input rows)."""
        k = id(tree)
        if k not in self._digests:  # the tree is kept with its digest: its id cannot name another object meanwhile
            self._digests[k] = (tree, data_fingerprint("", {"tree": tree}))
        return self._digests[k][1]

    def get(
        self, what: str, parts: tuple, compute: Callable[[], Any], check: Callable[[np.ndarray], None] | None = None
    ) -> np.ndarray:
        """The array ``compute()`` of the entry ``what`` computed from ``parts`` (pytrees and strings): read when
        stored and intact, else computed, checked by ``check`` (which raises on an array not to be kept) and
        stored."""
        if self.root is None:
            a = _host(compute())
            if check is not None:
                check(a)
            return a
        h = hashlib.sha256(f"v{_VERSION}|{what}|{self._model}".encode())
        for p in parts:
            h.update(b"|" + (p if isinstance(p, str) else self.digest(p)).encode())
        name = h.hexdigest()[:40]
        array_path, meta_path = self.root / f"{name}.npy", self.root / f"{name}.json"
        stored, why = _read(array_path, meta_path)
        if stored is not None:
            self.hits += 1
            return stored
        if why:
            warnings.warn(f"{array_path} ({what}) {why}; recomputing it.", RuntimeWarning, stacklevel=3)
        a = _host(compute())
        if check is not None:
            check(a)
        self.misses += 1
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_npy(array_path, a)
        atomic_json(meta_path, {"version": _VERSION, "what": what, "shape": list(a.shape), "dtype": a.dtype.str,
                                "crc": crc(a)})  # fmt: skip
        return a

    def settings(self) -> dict[str, Any]:
        """What the result records of the cache: its directory, and the entries read and computed."""
        if self.root is None:
            return {}
        return {"cache_dir": str(self.root.absolute()), "cache_read": self.hits, "cache_computed": self.misses}


def _host(a: Any) -> np.ndarray:
    """``a`` as a NumPy array; bfloat16 (which ``.npy`` cannot hold) as float32."""
    a = np.asarray(a)
    if a.dtype.kind == "V":
        a = a.astype(np.float32)
    return a


def _check_writable(root: Path) -> None:
    """``root``, or the nearest existing directory above it, can be written: the cache can be made there."""
    existing = next((d for d in (root.absolute(), *root.absolute().parents) if d.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == root.absolute() else f" (its nearest existing parent {existing} is not writable)"
        raise PermissionError(f"cache_dir {root} cannot be written{where}; pass a writable directory or None.")


def _model_digest(apply_fn: Callable, params: Any, x: Any) -> str:
    """What names the model function in the entries: the jaxprs of ``apply_fn`` and of its pullback on abstract
    parameters and inputs, its code, the jaxcompare and JAX versions and the precision policy."""
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), jax.numpy.result_type(a)), (params, x)
    )
    out = jax.eval_shape(apply_fn, *abstract)

    def pullback(p, xb, ct):
        return jax.vjp(lambda q: apply_fn(q, xb), p)[1](ct)

    traced = {"apply_fn": (apply_fn, abstract)}
    if all(jax.numpy.issubdtype(o.dtype, jax.numpy.inexact) for o in jax.tree_util.tree_leaves(out)):
        traced["pullback"] = (pullback, (*abstract, out))
    fp = model_fingerprint({}, traced, apply_fn)
    return f"{fp}|jaxcompare {__version__}|jax {jax.__version__}|precision {resolve_precision()}"


def _read(array_path: Path, meta_path: Path) -> tuple[np.ndarray | None, str]:
    """The stored array when its record reads and the array has the recorded shape, dtype and CRC-32; else
    ``None`` and why it is not used (empty when there is no entry)."""
    if not meta_path.exists():
        return None, ""
    damaged = f"does not match its record {meta_path.name} (edited, truncated or half-copied)"
    try:
        meta = json.loads(meta_path.read_text())
        a = np.load(array_path, allow_pickle=False)
    except Exception:  # any unreadable entry (a zip archive, garbage bytes, a missing array) is recomputed
        return None, damaged
    if not isinstance(meta, dict) or not isinstance(a, np.ndarray):
        return None, damaged
    if meta.get("version") != _VERSION:
        return None, f"was written by another cache format (version {meta.get('version')!r}, this one {_VERSION})"
    if list(a.shape) != meta.get("shape") or a.dtype.str != meta.get("dtype") or crc(a) != meta.get("crc"):
        return None, damaged
    return a, ""
