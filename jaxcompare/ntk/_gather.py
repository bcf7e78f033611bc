"""Getting a row-sharded kernel (:func:`sharded`) out of the devices: :func:`gather` (the whole array on every
process) and :func:`save_rows` (each process writes the rows its devices hold into one shared ``.npy`` file).

Under ``jax.distributed`` a process can only read the shards of its own devices; ``np.asarray(K)`` of a kernel that
spans other processes' devices raises. :func:`gather` is ``multihost_utils.process_allgather(K, tiled=True)`` (the
global array assembled from every process's shards; without ``tiled=True`` the shards would be stacked on a new
axis), the identity copy in one process. :func:`save_rows` never moves rows between processes: process 0 creates the
file (preallocated, atomically), every process writes the rows of its addressable shards (each replicated shard
once), and all processes meet at a barrier before returning, so the file is complete when any of them returns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .._validation import check_int
from ._disk import create_npy, open_npy

__all__ = ["gather", "save_rows"]


def _check_global(K: Any, fn: str) -> jax.Array:
    if isinstance(K, jax.core.Tracer):
        raise TypeError(f"{fn} moves data to the host: call it eagerly, not under jax.jit/vmap.")
    if not isinstance(K, jax.Array):
        raise TypeError(f"K must be a jax.Array (e.g. the output of jc.sharded), got {type(K).__name__}.")
    if K.ndim < 1:
        raise ValueError(f"K must have at least one axis (rows), got a scalar of shape {K.shape}.")
    return K


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(K: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-process) sharded array, as a NumPy array on every process.

    Every process must call it (it is a collective under ``jax.distributed``). Memory: the whole array on every host.

    Args:
      K: a ``jax.Array``, e.g. ``jc.sharded(kernel_fn)(params, x)``.

    Returns:
      ``numpy.ndarray`` equal to ``K``, same shape and dtype.

    Example:
      >>> def apply_fn(params, x):
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (8, 3))
      >>> K = jc.gather(jc.sharded(jc.trace_ntk(apply_fn))(params, x))
      >>> type(K).__name__, K.shape, bool(np.allclose(K, jc.trace_ntk(apply_fn)(params, x)))
      ('ndarray', (8, 8), True)
    """
    K = _check_global(K, "gather")
    if K.is_fully_addressable:
        return np.asarray(K)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(K, tiled=True))


def save_rows(K: jax.Array, path: str | os.PathLike, *, rows: int | None = None) -> np.memmap:
    """Write a row-sharded array to one ``.npy`` file, each process writing the rows its devices hold.

    Every process calls it with the same ``path`` (a file on a disk they share). Nothing is gathered: a process
    writes only its addressable shards (replicated shards once), so host memory stays that of its own rows.

    Args:
      K: a ``jax.Array`` sharded (or not) by rows, e.g. ``jc.sharded(kernel_fn)(params, x)``.
      path: the ``.npy`` file to create (replaced if it exists).
      rows: keep only the first ``rows`` rows (drop the padding of ``sharded(..., pad=True)``); default: all.

    Returns:
      The file as a read-only ``numpy.memmap`` (complete: the processes meet at a barrier before returning).

    Example:
      >>> def apply_fn(params, x):
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (8, 3))
      >>> import os, tempfile
      >>> f = os.path.join(tempfile.mkdtemp(), "K.npy")
      >>> K = jc.sharded(jc.trace_ntk(apply_fn), pad=True)(params, x[:7])   # padded to a multiple of the devices
      >>> jc.save_rows(K, f, rows=7).shape
      (7, 7)
    """
    K = _check_global(K, "save_rows")
    if path is None:
        raise TypeError("path is required: the .npy file to write.")
    n = K.shape[0] if rows is None else check_int(rows, "rows", min=1, max=K.shape[0])
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path must name the .npy file to write, got the directory {path}.")
    shape, dtype = (n,) + tuple(K.shape[1:]), np.dtype(K.dtype)
    if dtype.kind == "V":  # bfloat16 (ml_dtypes): the .npy format would store opaque 2-byte records
        raise TypeError(f"save_rows writes NumPy dtypes to .npy; cast K from {K.dtype} first (e.g. to float32).")
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_npy(path.parent, path, shape, dtype)
    _barrier(f"jaxcompare.save_rows.create:{path.name}")
    mm = open_npy(path, shape, dtype)
    if mm is None:
        raise OSError(
            f"{path} was not created with shape {shape} and dtype {dtype} by process 0 (is the "
            "directory shared by all processes?)."
        )
    for shard in K.addressable_shards:
        if shard.replica_id != 0:
            continue
        r = shard.index[0] if shard.index else slice(None)
        r0, r1, _ = r.indices(K.shape[0])
        r1 = min(r1, n)
        if r1 > r0:
            data = np.asarray(shard.data)[: r1 - r0]
            mm[(slice(r0, r1),) + tuple(shard.index[1:])] = data
    mm.flush()
    del mm
    _barrier(f"jaxcompare.save_rows.done:{path.name}")
    return np.load(path, mmap_mode="r")
