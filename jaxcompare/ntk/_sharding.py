"""``sharded``: compute any kernel function with its rows distributed over all devices of a mesh (of one process or
of every process of a cluster under ``jax.distributed``).

The rows of ``x1`` are split into one contiguous block of ``b`` rows per device (``shard_map`` over every axis of the
mesh); device ``x`` computes its ``b × N2`` strip of the unnormalized kernel (tile by tile with ``block_size``, so its
memory is that of one tile), and the per-point norms of the package's normalized kernels are computed the same way,
then applied once. The result is a ``jax.Array`` sharded by rows over the mesh — never replicated.

Symmetric saving (``x2=None``, kernels of this package): with ``D`` devices, device ``x`` computes its diagonal block
(only tiles on and above its diagonal) and the blocks ``(x, x + k mod D)`` for ``1 <= k < D/2``; it receives the
transposes of blocks ``(x - k, x)`` from device ``x - k`` (``lax.ppermute``: one shift per ``k``). For even ``D``,
the block ``(x, x + D/2)`` is computed in halves by the two devices it concerns, which exchange them. Each pair of
row blocks is thus computed once: ``D (D + 1) / 2`` blocks instead of ``D²``.

Inputs may be pytrees of arrays with a leading batch axis (``{"tokens", "mask"}``): every leaf is padded, split and
sliced by the same rows.

Rows that do not split evenly: a row-sharded ``jax.Array`` must split evenly, so with ``N1`` not a multiple of ``D``
``sharded(..., pad=True)`` returns the kernel padded to ``ceil(N1 / D) · D`` rows, the padding rows set to 0 (the
first ``N1`` rows are the kernel); without ``pad`` that case is an error that says so.

Multi-host: call ``jax.distributed.initialize()`` on every process first; ``jax.devices()`` then lists the devices
of all hosts and the default mesh spans them. Pass the same ``params``, ``x1``, ``x2`` on every process (they are
replicated inputs); each process holds the rows of its own devices in the result: :func:`gather` collects the whole
kernel on every process, :func:`save_rows` writes each process's rows to one shared ``.npy`` file without gathering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._validation import check_int, is_concrete
from ._batching import _traced
from ._common import batch_size, cosine_normalize, validate_pair, warn_zero_norm
from ._tiling import TilePlan, check_transform_args, diag_blocks, kernel_parts, pad_rows, swap, transformed

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


def _symmetric_strip(tile, diag_tile, swap_trailing, names, n_dev, b):
    """The per-device program of the symmetric scheme (module docstring): ``(params, x_all) -> (b, D·b, ...)``."""

    def strip(p, x_all):
        me = jax.lax.axis_index(names)

        def rows(start, size):  # pytree inputs: the same rows of every leaf
            return jax.tree_util.tree_map(lambda l: jax.lax.dynamic_slice_in_dim(l, start, size), x_all)

        own = rows(me * b, b)
        tiles = [diag_tile(p, own)] + [None] * (n_dev - 1)
        for k in range(1, (n_dev + 1) // 2):
            t = tile(p, own, rows(((me + k) % n_dev) * b, b))
            tiles[k] = t
            tiles[n_dev - k] = jax.lax.ppermute(
                swap(t, swap_trailing), names, [(s, (s + k) % n_dev) for s in range(n_dev)]
            )
        if n_dev % 2 == 0:
            h, hb = n_dev // 2, -(-b // 2)
            lo = me < h
            d = jnp.where(lo, me, me - h)  # the pair (d, d + h); T = K[rows_d, cols_{d+h}]
            piece = tile(p, rows(d * b + jnp.where(lo, 0, b - hb), hb), rows((d + h) * b, b))
            other = jax.lax.ppermute(piece, names, [(s, (s + h) % n_dev) for s in range(n_dev)])
            top, bottom = jnp.where(lo, piece, other), jnp.where(lo, other, piece)
            t = jnp.concatenate([top, bottom[2 * hb - b :]], axis=0)
            tiles[h] = jnp.where(lo, t, swap(t, swap_trailing))
        return jnp.roll(jnp.concatenate(tiles, axis=1), me * b, axis=1)  # relative block k -> block me + k

    return strip


def sharded(kernel_fn: Callable, mesh: Mesh | None = None, *, block_size: int | None = None, pad: bool = False) -> Any:
    """Distribute ``kernel_fn`` over the devices of ``mesh``: same signature, same result, rows sharded.

    Each device computes the rows of ``x1`` assigned to it against all of ``x2`` (``x2=None``: ``x1``, computing each
    pair of row blocks once, see the module docstring). For the package's normalized kernels (``trace_ntk``,
    ``pseudo_ntk(normalize=True)``, CK/Em...) the unnormalized kernel and the per-point norms are computed sharded
    and the cosine normalization is applied once, so the result equals ``kernel_fn(params, x1, x2)``. Any other
    ``kernel_fn(params, x1, x2) -> (N1, N2, ...)`` is sharded as is (never assumed symmetric). Works the same in one
    process and under ``jax.distributed`` (no value is fetched to the host: zero norms are counted on the devices).

    Args:
      kernel_fn: a kernel function (from this package or your own, with rows independent of each other).
      mesh: a ``jax.sharding.Mesh``; rows are split over all its axes. Default: all devices, one axis.
      block_size: if given, each device computes its blocks in ``block_size × block_size`` tiles
        (:func:`batched`), so its memory is bounded by one tile.
      pad: allow ``N1`` not divisible by the device count ``D``: the result then has ``ceil(N1 / D) · D`` rows, the
        padding rows 0. Without it such an ``N1`` raises (a row-sharded array must split evenly).

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
      >>> jc.gather(K).shape                                  # the whole kernel on every process (NumPy)
      (10, 10)
    """
    parts = kernel_parts(kernel_fn, "sharded")
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.")
    if block_size is not None:
        block_size = check_int(block_size, "block_size", min=1)
    if not isinstance(pad, bool):
        raise TypeError(f"pad must be True or False, got {pad!r}.")
    diag_fn = parts.spec.diag if parts.spec is not None else None
    bs = block_size

    def tile(p, a, b):
        if bs is None:
            return parts.tile_fn(p, a, b)
        na, nb = batch_size(a), batch_size(b)  # a shard smaller than a block: not padded to one
        return _traced(parts.tile_fn, p, a, b, TilePlan(na, nb, min(bs, max(na, nb)), False), parts.swap_trailing)

    def diag_tile(p, a):
        if bs is None:
            return parts.tile_fn(p, a, a)
        n = batch_size(a)
        return _traced(parts.tile_fn, p, a, a, TilePlan(n, n, min(bs, n), True), parts.swap_trailing)

    compiled: dict = {}

    def program(m: Mesh, kind: str, b: int = 0):
        key = (id(m), kind, b)
        if key not in compiled:
            rows, rep = PartitionSpec(m.axis_names), PartitionSpec()
            if kind == "strip":
                f = _shard_map(tile, m, (rep, rows, rep), rows)
            elif kind == "sym":
                f = _shard_map(
                    _symmetric_strip(tile, diag_tile, parts.swap_trailing, m.axis_names, m.size, b), m, (rep, rep), rows
                )
            else:  # norms
                f = _shard_map(
                    (lambda p, a: diag_blocks(diag_fn, p, a, bs, traced=True)) if bs else diag_fn, m, (rep, rows), rows
                )
            compiled[key] = (m, jax.jit(f))
        return compiled[key][1]

    def _mesh():
        return mesh if mesh is not None else default_mesh()

    def _check(params, *xs):
        if all(is_concrete(l) for l in jax.tree_util.tree_leaves((params, xs))):
            check_transform_args(params)

    def _padded_norms(m, params, x, n_to):
        return program(m, "norms")(params, pad_rows(x, n_to))

    def run(params, x1, x2, *, normalize: bool, strict: bool):
        x1, x2 = validate_pair(x1, x2)
        _check(params, x1, x2)
        m = _mesh()
        n1 = batch_size(x1)
        n_pad = -(-n1 // m.size) * m.size
        if strict and n_pad != n1 and not pad:
            raise ValueError(
                f"x1 has {n1} rows, not a multiple of the {m.size} devices of the mesh: a row-sharded "
                f"jax.Array must split evenly. Pass pad=True to get the kernel with {n_pad} rows (the "
                f"last {n_pad - n1} are padding, set to 0), or give x1 a multiple of {m.size} rows."
            )
        x1p = pad_rows(x1, n_pad)
        if x2 is None and parts.symmetric_known and m.size > 1:
            k = program(m, "sym", n_pad // m.size)(params, x1p)
        else:
            k = program(m, "strip")(params, x1p, x1p if x2 is None else x2)
        n2 = n1 if x2 is None else batch_size(x2)
        d1 = d2 = None
        if normalize:
            d1 = _padded_norms(m, params, x1, n_pad)
            d2 = d1 if x2 is None else _padded_norms(m, params, x2, -(-n2 // m.size) * m.size)
            if x2 is None and is_concrete(d1):
                n_zero = int(_count_zero(d1, n1))  # a replicated scalar: no global array reaches the host
                if n_zero:
                    warn_zero_norm(np.zeros(n_zero), "norm")
        keep = n_pad if (strict and pad) else n1
        out = NamedSharding(m, PartitionSpec(m.axis_names)) if keep % m.size == 0 else None
        return _finish(k, d1, d2, n1, n2, keep, out)

    def base(params, x1, x2=None):
        """The un-normalized kernel (the kernel itself for a plain callable), rows sharded."""
        return run(params, x1, x2, normalize=False, strict=False)

    def diag(params, x):
        x, _ = validate_pair(x, None)
        _check(params, x)
        m = _mesh()
        n = batch_size(x)
        return _padded_norms(m, params, x, -(-n // m.size) * m.size)[:n]

    def fn(params, x1, x2=None):
        return run(params, x1, x2, normalize=parts.use_norm, strict=True)

    return transformed(kernel_fn, parts, fn, base, diag if diag_fn is not None else None, "sharded")


@jax.jit
def _count_zero(d: jax.Array, n: int) -> jax.Array:
    return jnp.sum(jnp.where(jnp.arange(d.shape[0]) < n, d <= 0, False))


def _finish(k, d1, d2, n1, n2, keep, out_sharding):
    """Crop the padding columns, normalize, and crop (or zero) the padding rows; rows stay sharded."""
    f = _finish_jit.get(out_sharding)
    if f is None:
        f = jax.jit(_finish_body, static_argnums=(3, 4, 5), out_shardings=out_sharding)
        _finish_jit[out_sharding] = f
    return f(k, d1, d2, n1, n2, keep)


_finish_jit: dict = {}


def _finish_body(k, d1, d2, n1, n2, keep):
    k = k[:keep, :n2]
    if d1 is not None:
        k = cosine_normalize(k, d1[:keep], d2[:n2])
    if keep != n1:
        valid = (jnp.arange(keep) < n1).reshape((keep,) + (1,) * (k.ndim - 1))
        k = jnp.where(valid, k, jnp.zeros((), k.dtype))
    return k
