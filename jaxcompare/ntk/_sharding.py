"""``sharded``: compute any kernel function with its rows distributed over all devices of a mesh.

The rows of ``x1`` are split into one contiguous block per device (``shard_map`` over every axis of the mesh);
each device computes its ``(N1 / n_devices) × N2`` strip of the unnormalized kernel (optionally tile by tile with
``block_size``, so its memory is that of one tile), and the per-point norms of the package's normalized kernels
are computed the same way, then applied once. The result is a ``jax.Array`` sharded by rows over the mesh.

Multi-host: call ``jax.distributed.initialize()`` on every process first; ``jax.devices()`` then lists the devices
of all hosts and the default mesh spans them. Pass the same ``params``, ``x1``, ``x2`` on every process (they are
replicated inputs); each process holds the rows of its own devices in the result (gather them with
``jax.experimental.multihost_utils.process_allgather`` if one process needs the whole kernel).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._validation import check_int, is_concrete
from ._batching import batched
from ._common import cosine_normalize, validate_pair, warn_zero_norm
from ._tiling import check_transform_args, diag_blocks, kernel_parts, pad_rows, transformed

__all__ = ["sharded"]


def _shard_map(f, mesh, in_specs, out_specs):
    sm = getattr(jax, "shard_map", None)
    if sm is not None:
        try:
            return sm(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
        except TypeError:  # pragma: no cover - older signature
            pass
    from jax.experimental.shard_map import shard_map as sm_old  # pragma: no cover

    return sm_old(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)  # pragma: no cover


def default_mesh() -> Mesh:
    """A one-axis mesh ``("devices",)`` over ``jax.devices()`` (all devices of all processes)."""
    return Mesh(np.array(jax.devices()), ("devices",))


def sharded(kernel_fn: Callable, mesh: Mesh | None = None, *, block_size: int | None = None) -> Any:
    """Distribute ``kernel_fn`` over the devices of ``mesh``: same signature, same result, rows sharded.

    Each device computes the rows of ``x1`` assigned to it against all of ``x2`` (``x2=None``: ``x1``). For the
    package's normalized kernels (``trace_ntk``, ``pseudo_ntk(normalize=True)``, CK/Em...) the unnormalized kernel
    and the per-point norms are computed sharded and the cosine normalization is applied once, so the result equals
    ``kernel_fn(params, x1, x2)``. Any other ``kernel_fn(params, x1, x2) -> (N1, N2, ...)`` is sharded as is.
    ``x1`` is padded to a multiple of the device count by repeating its first row; padding is dropped (when ``N1``
    is not a multiple of the device count the result cannot be split evenly and JAX chooses its layout).

    Args:
      kernel_fn: a kernel function (from this package or your own, with rows independent of each other).
      mesh: a ``jax.sharding.Mesh``; rows are split over all its axes. Default: all devices, one axis.
      block_size: if given, each device computes its strip in ``block_size × block_size`` tiles
        (:func:`batched`), so its memory is bounded by one tile.

    Returns:
      ``kernel_fn(params, x1, x2=None)`` returning a ``jax.Array`` sharded by rows over ``mesh``: a :class:`Kernel`
      record for a kernel of this package (``spec.base``/``spec.diag`` sharded, so ``batched(sharded(k))`` and
      ``kernel_to_disk(sharded(k), ...)`` compute every tile sharded), else a plain function.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> # all devices by default: all GPUs of a machine/cluster, or on CPU one device unless
      >>> # XLA_FLAGS=--xla_force_host_platform_device_count=8 was set before importing jax
      >>> K = jc.sharded(jc.trace_ntk(apply_fn), block_size=4)(params, x)
      >>> K.shape, bool(jnp.allclose(K, jc.trace_ntk(apply_fn)(params, x)))
      ((10, 10), True)
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("rows",))      # or an explicit mesh
      >>> jc.sharded(jc.trace_ntk(apply_fn), mesh)(params, x).shape
      (10, 10)
    """
    parts = kernel_parts(kernel_fn, "sharded")
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.")
    if block_size is not None:
        block_size = check_int(block_size, "block_size", min=1)
    tile_fn = parts.tile_fn
    diag_fn = parts.spec.diag if parts.spec is not None else None
    if block_size is not None:
        tile_fn = batched(tile_fn, block_size, progress_bar=False)
    compiled: dict = {}

    def programs(m: Mesh):
        key = id(m)
        if key not in compiled:
            rows = PartitionSpec(m.axis_names)
            strip = _shard_map(lambda p, a, b: tile_fn(p, a, b), m, (PartitionSpec(), rows, PartitionSpec()), rows)
            if diag_fn is not None:
                if block_size is not None:
                    def diag_local(p, a):
                        return diag_blocks(diag_fn, p, a, block_size, traced=True)
                else:
                    diag_local = diag_fn
                diag = jax.jit(_shard_map(diag_local, m, (PartitionSpec(), rows), rows))
            else:
                diag = None
            out_sharding = NamedSharding(m, rows)

            def finish(k, n1, d1=None, d2=None):
                k = k[:n1]
                return k if d1 is None else cosine_normalize(k, d1, d2)

            finish_sharded = jax.jit(finish, static_argnums=1, out_shardings=out_sharding)
            finish_plain = jax.jit(finish, static_argnums=1)

            def finish_any(k, n1, d1=None, d2=None):
                # rows stay sharded when they split evenly (jax.Array shardings must divide the shape)
                return (finish_sharded if n1 % m.size == 0 else finish_plain)(k, n1, d1, d2)

            compiled[key] = (m, jax.jit(strip), diag, finish_any)
        return compiled[key][1:]

    def _mesh():
        return mesh if mesh is not None else default_mesh()

    def _check(params, *xs):
        if all(is_concrete(l) for l in jax.tree_util.tree_leaves((params, xs))):
            check_transform_args(params)

    def base(params, x1, x2=None):
        """The un-normalized kernel (the kernel itself for a plain callable), rows sharded."""
        x1, x2 = validate_pair(x1, x2)
        _check(params, x1, x2)
        m = _mesh()
        strip, _, finish = programs(m)
        n1 = x1.shape[0]
        x1p = pad_rows(x1, -(-n1 // m.size) * m.size)
        return finish(strip(params, x1p, x1 if x2 is None else x2), n1)

    def diag(params, x):
        x, _ = validate_pair(x, None)
        _check(params, x)
        m = _mesh()
        n = x.shape[0]
        return programs(m)[1](params, pad_rows(x, -(-n // m.size) * m.size))[:n]

    def fn(params, x1, x2=None):
        if not parts.use_norm:
            return base(params, x1, x2)
        x1, x2 = validate_pair(x1, x2)
        _check(params, x1, x2)
        m = _mesh()
        strip, _, finish = programs(m)
        n1 = x1.shape[0]
        x1p = pad_rows(x1, -(-n1 // m.size) * m.size)
        k = strip(params, x1p, x1 if x2 is None else x2)
        d1 = diag(params, x1)
        d2 = d1 if x2 is None else diag(params, x2)
        if x2 is None:
            warn_zero_norm(d1, "norm")
        return finish(k, n1, d1, d2)

    return transformed(kernel_fn, parts, fn, base, diag if diag_fn is not None else None, "sharded")
