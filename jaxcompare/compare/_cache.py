"""What a comparison computes per model, kept on disk so that a rerun resumes (``compare_models(cache_dir=)``,
``jaxcompare compare``'s ``--out DIR/cache``).

Each entry is an array computed from one model: its logits on the test or training inputs, its kernel on the
similarity points, its surrogate's training and cross kernels. An entry is named by the SHA-256 of everything it
is computed from — what it is (``"logits"``, ``"similarity kernel"``, ...), the kernel's name, the model function
(the jaxpr of ``apply_fn`` on the first model's parameter shapes and the code of ``apply_fn``), the model's
parameters, the input rows and the batch size — and stored as ``<name>.npy`` beside ``<name>.json`` (what it is,
its shape, dtype and CRC-32), both renamed into place, the JSON last. An entry is trusted only when its array
matches its JSON; one that does not (edited, truncated, from another machine's half-written copy) is recomputed
with a warning. Entries of other inputs are never overwritten: another model or other data gives other names, and
the directory may be shared by several comparisons (entries are renamed into place, so concurrent writers of one
entry leave one whole copy). Nothing is ever deleted: remove the directory to free its space.
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

from ..ntk._disk import atomic_json, atomic_npy, crc, store_dir
from ..ntk._fingerprint import data_fingerprint, model_fingerprint

__all__ = ["ArrayCache"]

_VERSION = 1


class ArrayCache:
    """Per-model arrays of a comparison in ``directory`` (module docstring); ``None`` keeps nothing."""

    def __init__(self, directory: Any, apply_fn: Callable, params: Any, x: Any):
        self.root = None if directory is None else store_dir(directory, "the comparison's cache")
        self.hits = self.misses = 0
        self._digests: dict[int, tuple[Any, str]] = {}
        self._model = ""
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):  # before any model runs, not after the first one
                raise PermissionError(f"cache_dir {self.root} is not writable; pass a writable directory or None.")
            abstract = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(np.shape(a), jax.numpy.result_type(a)),
                (params, jax.tree_util.tree_map(lambda a: a[:1], x)),
            )
            self._model = model_fingerprint({}, {"apply_fn": (apply_fn, abstract)}, apply_fn)

    def digest(self, tree: Any) -> str:
        """SHA-256 of a pytree's structure and bytes, computed once per object (parameters, input rows)."""
        k = id(tree)
        if k not in self._digests:  # the tree is kept with its digest: its id cannot name another object meanwhile
            self._digests[k] = (tree, data_fingerprint("", {"tree": tree}))
        return self._digests[k][1]

    def get(self, what: str, parts: tuple, compute: Callable[[], Any]) -> np.ndarray:
        """The array ``compute()`` of the entry ``what`` computed from ``parts`` (pytrees and strings): read when
        stored and intact, else computed and stored."""
        if self.root is None:
            return np.asarray(compute())
        h = hashlib.sha256(f"v{_VERSION}|{what}|{self._model}".encode())
        for p in parts:
            h.update(b"|" + (p if isinstance(p, str) else self.digest(p)).encode())
        name = h.hexdigest()[:40]
        array_path, meta_path = self.root / f"{name}.npy", self.root / f"{name}.json"
        stored = _read(array_path, meta_path)
        if stored is not None:
            self.hits += 1
            return stored
        if meta_path.exists():
            warnings.warn(
                f"{array_path} ({what}) does not match its record {meta_path.name} (edited, truncated or "
                "half-copied); recomputing it.",
                RuntimeWarning,
                stacklevel=3,
            )
        a = np.asarray(compute())
        if a.dtype.kind == "V":  # bfloat16 (ml_dtypes): .npy has no such type; kept, and returned, as float32
            a = a.astype(np.float32)
        self.misses += 1
        atomic_npy(array_path, a)
        atomic_json(meta_path, {"version": _VERSION, "what": what, "shape": list(a.shape), "dtype": a.dtype.str,
                                "crc": crc(a)})  # fmt: skip
        return a

    def settings(self) -> dict[str, Any]:
        """What the result records of the cache: its directory, and the entries read and computed."""
        if self.root is None:
            return {}
        return {"cache_dir": str(self.root.absolute()), "cache_read": self.hits, "cache_computed": self.misses}


def _read(array_path: Path, meta_path: Path) -> np.ndarray | None:
    """The stored array when its record reads and the array has the recorded shape, dtype and CRC-32."""
    try:
        meta = json.loads(meta_path.read_text())
        a = np.load(array_path)
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != _VERSION:
        return None
    if list(a.shape) != meta.get("shape") or a.dtype.str != meta.get("dtype") or crc(a) != meta.get("crc"):
        return None
    return a
