"""Symmetric eigenvalue helpers for the recorder.

On CPU, ``jnp.linalg.eigh`` always computes eigenvectors; the spectra recorded during training need eigenvalues only,
which LAPACK's ``syevd`` with ``jobz='N'`` computes several times faster. The ``"lapack"`` backend calls
``scipy.linalg.eigh(..., eigvals_only=True)`` through ``jax.pure_callback`` (works under ``jit``, ``vmap`` and
inside ``lax.scan``); the ``"jax"`` backend stays on device (use it on GPU/TPU).

Several devices: a host callback in a program partitioned over devices runs once, on the first device of the
program (``{maximal device=0}``): XLA gathers every seed's matrix there, runs all eigendecompositions on one host
thread and scatters the results back — with ``jax.distributed`` through process 0, over the network, for every
record (the whole ``jit(vmap(train))`` over globally sharded keys collapsed to a replicated program, and one
2-process run hung). A callback per device (``shard_map``) would need the caller's mesh, which ``vmap``-ed code does
not know. So the default is ``"lapack"`` only when the program cannot be partitioned — a single CPU device — and
``"jax"`` (each device decomposes its own seeds' matrices) whenever there are several devices or processes. Runs that
stay on one device of each process (seeds split by ``jax.process_index()``, local arrays) may still pass
``eig_backend="lapack"`` for its speed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["eigvalsh_desc", "eigh_top", "default_eig_backend"]


def default_eig_backend() -> str:
    """``"lapack"`` on a single CPU device, ``"jax"`` otherwise (accelerators, several devices or processes)."""
    return "lapack" if jax.default_backend() == "cpu" and jax.device_count() == 1 else "jax"


@jax.custom_batching.custom_vmap
def _eigh(m: jax.Array) -> tuple[jax.Array, jax.Array]:
    return tuple(jnp.linalg.eigh(m))


@_eigh.def_vmap
def _eigh_vmap(axis_size, in_batched, m):
    """On one CPU device: one matrix per ``syevd`` call, the seeds in sequence (``lax.map``), not one batched call.

    jaxlib's CPU ``syevd`` of a batch splits it over XLA's intra-op thread pool and blocks a pool thread until the
    parts finish; two such calls at once (independent ops of one program, e.g. the spectra of one record) can block
    every thread of a small pool and the program never finishes (jaxlib 0.10.2, 2 cores: ``lwr.train`` vmapped over
    4 seeds at ``n = 100`` and ``200``, ``eig_backend="jax"``, hung in most runs). A batch of one runs inline.
    Several devices and accelerators keep the batched call: a loop over a batch sharded over devices would gather it
    on every device (21 all-gathers in the 4-device program), and with one seed per device each call has a batch of
    one anyway.
    """
    del axis_size
    if not in_batched[0]:
        return _eigh(m), (False, False)
    if jax.default_backend() != "cpu" or jax.device_count() > 1:
        return tuple(jnp.linalg.eigh(m)), (True, True)
    return jax.lax.map(_eigh, m), (True, True)


def _host_eigvalsh(m):
    import scipy.linalg

    m = np.asarray(m)
    flat = m.reshape((-1,) + m.shape[-2:])
    out = np.full(flat.shape[:-1], np.nan, dtype=m.dtype)
    for i in range(flat.shape[0]):
        if np.all(np.isfinite(flat[i])):  # a non-finite matrix (a failed run) gets NaN, not a LAPACK error
            out[i] = scipy.linalg.eigh(flat[i], eigvals_only=True, driver="evd", check_finite=False)
    return out.reshape(m.shape[:-1])


def _host_eigh(m):
    import scipy.linalg

    m = np.asarray(m)
    flat = m.reshape((-1,) + m.shape[-2:])
    w = np.full(flat.shape[:-1], np.nan, dtype=m.dtype)
    v = np.full(flat.shape, np.nan, dtype=m.dtype)
    for i in range(flat.shape[0]):
        if np.all(np.isfinite(flat[i])):
            w[i], v[i] = scipy.linalg.eigh(flat[i], driver="evd", check_finite=False)
    return w.reshape(m.shape[:-1]), v.reshape(m.shape)


def eigvalsh_desc(m: jax.Array, backend: str) -> jax.Array:
    """Eigenvalues of a symmetric ``(n, n)`` matrix in descending order."""
    if backend == "lapack":
        sym = 0.5 * (m + m.T)
        w = jax.pure_callback(
            _host_eigvalsh, jax.ShapeDtypeStruct(m.shape[:-1], m.dtype), sym, vmap_method="expand_dims"
        )
    else:
        w = _eigh(m)[0]
    return w[::-1]


def eigh_top(m: jax.Array, backend: str) -> tuple[jax.Array, jax.Array]:
    """All eigenvalues (descending) and the eigenvectors as columns in the same order."""
    if backend == "lapack":
        sym = 0.5 * (m + m.T)
        w, v = jax.pure_callback(
            _host_eigh,
            (jax.ShapeDtypeStruct(m.shape[:-1], m.dtype), jax.ShapeDtypeStruct(m.shape, m.dtype)),
            sym,
            vmap_method="expand_dims",
        )
    else:
        w, v = _eigh(m)
    return w[::-1], v[:, ::-1]
