"""Tiling shared by the kernel transforms (:func:`batched`, :func:`sharded`, :func:`kernel_to_disk`).

One home for: what a transform may know about a kernel (:func:`kernel_parts`: the un-normalized base, the diagonal,
symmetry, class axes), the tile plan (blocks of ``block_size`` rows, only tiles on and above the diagonal when
``x2 is None``), padding of inputs to whole blocks, mirroring of symmetric tiles, per-point norms by blocks and the
final cosine normalization, and the transformed kernel record (:func:`transformed`).

Normalization after tiling: for a normalized kernel ``K = K0 / sqrt(d_i d_j)`` the tiles are tiles of ``K0`` (the
spec's ``base``) and the norms ``d`` (the spec's ``diag``) are computed once per point, so a normalized kernel costs
the same as an unnormalized one. A kernel without a spec (a plain callable) is tiled as is and never assumed
symmetric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_finite_tree, is_concrete
from ._common import Kernel, KernelSpec, cosine_normalize, kernel_spec, warn_zero_norm
from ._inputs import batch_size, pad_rows, take_rows

# Inputs are batches: arrays (N, ...) or pytrees of arrays with one leading size (._inputs); every row operation
# here (padding, blocks, reshapes into blocks) maps over their leaves.

__all__ = [
    "KernelParts",
    "TilePlan",
    "kernel_parts",
    "pad_rows",
    "swap",
    "diag_blocks",
    "normalize",
    "transformed",
    "check_transform_args",
]


def swap(tile: Any, swap_trailing: bool) -> Any:
    """The tile of ``K(x2, x1)`` from that of ``K(x1, x2)`` (NumPy or JAX arrays): rows ↔ columns, and the class
    axes ``(C, C)`` when the kernel has them."""
    xp = np if isinstance(tile, np.ndarray) else jnp
    t = xp.swapaxes(tile, 0, 1)
    if swap_trailing and tile.ndim >= 4:
        t = xp.swapaxes(t, 2, 3)
    return t


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Blocks of ``block_size`` rows of ``x1`` (``n1`` rows) and ``x2`` (``n2``); ``symmetric``: only tiles with
    ``j >= i`` are computed, the others mirrored."""

    n1: int
    n2: int
    block_size: int
    symmetric: bool

    @property
    def nb1(self) -> int:
        return -(-self.n1 // self.block_size)

    @property
    def nb2(self) -> int:
        return -(-self.n2 // self.block_size)

    @property
    def pairs(self) -> tuple:
        return tuple((i, j) for i in range(self.nb1) for j in range(self.nb2) if not self.symmetric or j >= i)

    def rows(self, i: int, n: int) -> tuple[int, int]:
        """Unpadded row range of block ``i`` of an input with ``n`` rows."""
        return i * self.block_size, min((i + 1) * self.block_size, n)

    def padded(self, x: Any) -> Any:
        return pad_rows(x, -(-batch_size(x) // self.block_size) * self.block_size)

    def block(self, xp: Any, i: int) -> Any:
        return take_rows(xp, i * self.block_size, (i + 1) * self.block_size)

    def blocks(self, xp: Any) -> Any:
        """A padded batch reshaped to ``(n_blocks, block_size, ...)`` leaf by leaf (for ``lax.map``)."""
        bs = self.block_size
        return jax.tree_util.tree_map(lambda l: l.reshape((l.shape[0] // bs, bs) + tuple(l.shape[1:])), xp)


@dataclasses.dataclass(frozen=True)
class KernelParts:
    """What a transform uses of a kernel: ``tile_fn`` (the base of a normalized kernel, else the kernel),
    ``diag_fn`` (None unless normalized after tiling), symmetry and class axes, and the spec (None: plain)."""

    spec: KernelSpec | None
    tile_fn: Callable
    diag_fn: Callable | None
    symmetric_known: bool
    swap_trailing: bool
    name: str

    @property
    def use_norm(self) -> bool:
        return self.diag_fn is not None and self.spec is not None and self.spec.normalize


def kernel_parts(kernel_fn: Any, caller: str) -> KernelParts:
    """Check ``kernel_fn`` and split it into the parts a transform tiles (see :class:`KernelParts`)."""
    if not callable(kernel_fn):
        raise TypeError(
            f"kernel_fn must be callable (params, x1, x2=None) -> (N1, N2, ...), got {type(kernel_fn).__name__}."
        )
    spec = kernel_spec(kernel_fn, caller)
    if spec is None:
        return KernelParts(None, kernel_fn, None, False, False, getattr(kernel_fn, "__name__", "kernel"))
    if spec.normalize and spec.diag is None:  # cannot normalize after tiling: tile the kernel itself
        return KernelParts(spec, kernel_fn, None, True, bool(spec.swap_trailing), spec.name)
    return KernelParts(spec, spec.base, spec.diag, True, bool(spec.swap_trailing), spec.name)


def check_transform_args(params: Any) -> None:
    """Eager check a transform does before running jitted tiles, inside which values are traced: finite parameters
    (their dtypes are checked by the kernel itself, also under tracing)."""
    check_finite_tree(params, "params")


def diag_blocks(diag_fn: Callable, params: Any, x: Any, bs: int, traced: bool) -> jax.Array:
    """``diag_fn(params, x)`` computed ``bs`` rows at a time (``lax.map`` when traced, else a Python loop)."""
    n = batch_size(x)
    bs = min(bs, n)  # fewer rows than a block: not padded
    nb = -(-n // bs)
    xp = pad_rows(x, nb * bs)
    if traced:
        xb = jax.tree_util.tree_map(lambda l: l.reshape((nb, bs) + tuple(l.shape[1:])), xp)
        return jax.lax.map(lambda a: diag_fn(params, a), xb).reshape(-1)[:n]
    return jnp.concatenate([diag_fn(params, take_rows(xp, i * bs, (i + 1) * bs)) for i in range(nb)])[:n]


def normalize(k: Any, d1: Any, d2: Any, *, warn: bool) -> Any:
    """Cosine normalization with the zero-norm convention; ``warn``: warn (eagerly) about zero-norm points of x1."""
    if warn and is_concrete(d1):
        warn_zero_norm(d1, "norm")
    return cosine_normalize(k, d1, d2)


def transformed(
    kernel_fn: Any, parts: KernelParts, fn: Callable, base: Callable | None, diag: Callable | None, transform: str
) -> Any:
    """The record a transform returns: for a kernel record, a new :class:`Kernel` whose ``spec.base``/``spec.diag``
    are the transformed parts (so that stacked transforms use them); for a plain callable, the plain function."""
    if parts.spec is None:
        return fn
    spec = dataclasses.replace(
        parts.spec,
        base=base if base is not None else parts.spec.base,
        diag=diag if diag is not None else parts.spec.diag,
        transforms=parts.spec.transforms + (transform,),
    )
    return Kernel(fn, spec)
