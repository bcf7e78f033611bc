"""Convolutions as strided-slice patches @ flattened filter, with a custom VJP for the patch extraction.

Same value as ``lax.conv_general_dilated``; the derivative with respect to the input is a matrix product followed by
pads and adds (the transpose of the slices, computed phase by phase), which XLA's CPU backend runs faster than the
input-dilated convolution it would otherwise emit for a *strided* convolution; for stride 1 its native transposed
convolution is faster (:func:`prefer_patches` chooses per layer and backend). The patches are the layer inputs
``a_t`` of the structured kernel; for a convolution evaluated natively they are taken from its recorded input by
strided slices (:func:`conv_patches`), never by ``conv_general_dilated_patches`` (a convolution with an identity
filter: ``T·D²`` FLOPs per example, more than the layer's C backward passes on a ResNet). Natively evaluated
convolutions go through :func:`conv_native`, whose input cotangent XLA:CPU runs at full speed inside loops.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ConvGeo",
    "conv_geo",
    "conv_ok",
    "conv_by_patches",
    "conv_native",
    "conv_patches",
    "prefer_patches",
    "raw_input",
    "patches_of",
    "raw_gram",
    "raw_gram_cheaper",
    "ga_flops",
]


def conv_ok(params: dict) -> bool:
    """Convolutions evaluated as patches @ filter by :func:`conv_by_patches` (no input dilation)."""
    return all(int(v) == 1 for v in params["lhs_dilation"])


def prefer_patches(params: dict, backend: str | None = None) -> bool:
    """The convolution strategy of the structured pass, per layer and backend: evaluate a convolution as
    patches @ filter (:func:`conv_by_patches`) on CPU when it is strided, else as the native convolution
    (:func:`conv_native`).

    Measured on XLA's CPU backend (float32, C = 10 backward passes inside the pass's ``lax.map``, jaxlib 0.10.2):
    with :func:`conv_native`'s filter layout, patches for the strided layers and native convolutions elsewhere
    take 2.6 ms per example on the small CNN (3.8 all native), 53 ms on the full-width ResNet-18 (58) and 14.7 ms
    on the quarter-width one (14.0). On GPU/TPU the native convolution (cuDNN, the MXU) is used throughout; its
    patches come from strided slices of the recorded input (:func:`conv_patches`)."""
    if not conv_ok(params):
        return False
    backend = jax.default_backend() if backend is None else backend
    return backend == "cpu" and any(int(v) > 1 for v in params["window_strides"])


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _extract_patches(a: jax.Array, taps_shape: tuple, dil: tuple, strides: tuple) -> jax.Array:
    """Patches of a padded ``(B, S..., C)`` array as ``(B, O..., taps, C)`` (taps in row-major order): one strided
    slice per tap of the (valid) window."""
    k = len(taps_shape)
    outs = tuple((a.shape[1 + i] - (dil[i] * (taps_shape[i] - 1) + 1)) // strides[i] + 1 for i in range(k))
    slices = []
    for tap in np.ndindex(*taps_shape):
        start = (0,) + tuple(tap[i] * dil[i] for i in range(k)) + (0,)
        limit = (a.shape[0],) + tuple(start[1 + i] + strides[i] * (outs[i] - 1) + 1 for i in range(k)) + (a.shape[-1],)
        slices.append(jax.lax.slice(a, start, limit, (1,) + strides + (1,)))
    return jnp.stack(slices, axis=-2)


def _extract_patches_fwd(a, taps_shape, dil, strides):
    return _extract_patches(a, taps_shape, dil, strides), a.shape


def _extract_patches_bwd(taps_shape, dil, strides, shape, dp):
    """Transpose of the patch extraction ("col2im") by phases: position ``y = s·q + r`` of a spatial axis with
    stride ``s`` receives tap ``t`` (offset ``o = t·dil``) from output ``q − o//s`` exactly when ``r = o mod s``.
    Each phase is a sum of shifted copies of its taps' cotangents; the phases are then interleaved by one
    reshape. (Autodiff of strided slices instead adds one interior-padded array of the full input size per tap,
    several times more memory traffic — the bottleneck of the C backward passes of a CNN on CPU.)"""
    k = len(taps_shape)
    b, c = shape[0], shape[-1]
    spatial = shape[1:-1]
    outs = dp.shape[1 : 1 + k]
    q = tuple(
        max(-(-spatial[i] // strides[i]), outs[i] + (dil[i] * (taps_shape[i] - 1)) // strides[i]) for i in range(k)
    )
    phases: dict = {}
    zero = jnp.zeros((), dp.dtype)
    for j, tap in enumerate(np.ndindex(*taps_shape)):
        off = tuple(tap[i] * dil[i] for i in range(k))
        r = tuple(off[i] % strides[i] for i in range(k))
        sh = tuple(off[i] // strides[i] for i in range(k))
        piece = jax.lax.pad(
            dp[..., j, :], zero, [(0, 0, 0)] + [(sh[i], q[i] - outs[i] - sh[i], 0) for i in range(k)] + [(0, 0, 0)]
        )
        phases[r] = piece if r not in phases else phases[r] + piece
    full = jnp.zeros((b,) + q + (c,), dp.dtype)
    stacked = jnp.stack([phases.get(r, full) for r in np.ndindex(*strides)])  # (s1·…·sk, B, Q..., C)
    stacked = stacked.reshape(tuple(strides) + (b,) + q + (c,))
    perm = (k,) + tuple(x for i in range(k) for x in (k + 1 + i, i)) + (2 * k + 1,)  # (B, Q1, s1, …, C)
    out = jnp.transpose(stacked, perm).reshape((b,) + tuple(q[i] * strides[i] for i in range(k)) + (c,))
    out = jax.lax.slice(out, (0,) * (k + 2), (b,) + tuple(spatial) + (c,))
    return (out,)


_extract_patches.defvjp(_extract_patches_fwd, _extract_patches_bwd)


def _padded_input(lhs: jax.Array, params: dict) -> jax.Array:
    """The convolution's input as ``(B, S..., C_in)``, padded as the primitive pads it."""
    ls = params["dimension_numbers"].lhs_spec
    a = jnp.transpose(lhs, (ls[0],) + tuple(ls[2:]) + (ls[1],))
    pads = [(0, 0, 0)] + [(int(lo), int(hi), 0) for lo, hi in params["padding"]] + [(0, 0, 0)]
    return jax.lax.pad(a, jnp.zeros((), a.dtype), pads)


def conv_patches(lhs: jax.Array, params: dict, taps_shape: tuple) -> jax.Array:
    """Patches ``(B, O..., taps·C_in)`` of a convolution's input (no input dilation: :func:`conv_ok`), in the
    feature order of :func:`conv_by_patches` (taps, then input channels): strided slices, no arithmetic (XLA's
    ``conv_general_dilated_patches`` is a convolution with an identity filter: ``T·D²`` FLOPs per example)."""
    a = _padded_input(lhs, params)
    strides = tuple(int(v) for v in params["window_strides"])
    dil = tuple(int(v) for v in params["rhs_dilation"])
    p = _extract_patches(a, tuple(int(t) for t in taps_shape), dil, strides)
    return p.reshape(p.shape[:-2] + (-1,))


def conv_by_patches(lhs: jax.Array, rhs: jax.Array, params: dict) -> tuple[jax.Array, jax.Array]:
    """``conv_general_dilated(lhs, rhs, **params)`` as one matrix product of strided-slice patches with the
    flattened filter; returns ``(output in the primitive's layout, patches (B, positions..., taps·C_in))``.

    Same value as the primitive; its derivative with respect to the input is a matrix product followed by
    pads and adds (the transpose of the slices), which XLA runs much faster on CPU than the transposed
    convolution it would otherwise emit — one backward pass per class makes this the dominant cost of a CNN.
    The patches are the layer inputs ``a_t`` of the structured kernel; their feature order (taps, then input
    channels) differs from ``conv_general_dilated_patches``, which leaves every inner product unchanged.
    """
    dn = params["dimension_numbers"]
    ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    k = len(ls) - 2
    a = _padded_input(lhs, params)  # (B, S..., C_in)
    w = jnp.transpose(rhs, tuple(rs[2:]) + (rs[1], rs[0]))  # (K..., C_in, C_out)
    strides = tuple(int(v) for v in params["window_strides"])
    dil = tuple(int(v) for v in params["rhs_dilation"])
    taps_shape = tuple(int(t) for t in w.shape[:k])
    patches = _extract_patches(a, taps_shape, dil, strides)  # (B, O..., taps, C_in)
    patches = patches.reshape(patches.shape[:-2] + (-1,))
    z = jax.lax.dot_general(
        patches,
        w.reshape(-1, w.shape[-1]),
        (((k + 1,), (0,)), ((), ())),
        precision=params.get("precision"),
        preferred_element_type=params.get("preferred_element_type"),
    )
    inv = [0] * (k + 2)  # z is (B, O..., C_out); place its axes where out_spec says
    inv[os_[0]] = 0
    inv[os_[1]] = k + 1
    for i in range(k):
        inv[os_[2 + i]] = 1 + i
    return jnp.transpose(z, inv), patches


def _frozen(params: dict) -> tuple:
    return tuple(sorted(params.items()))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_native(lhs: jax.Array, rhs: jax.Array, frozen: tuple) -> jax.Array:
    return jax.lax.conv_general_dilated_p.bind(lhs, rhs, **dict(frozen))


def _conv_native_fwd(lhs, rhs, frozen):
    return _conv_native(lhs, rhs, frozen), (lhs, rhs)


def _conv_native_bwd(frozen, res, ct):
    """The input's cotangent from a filter whose input and output feature axes are *physically* swapped (kept
    swapped by an optimization barrier), so that the transposed convolution reads its filter in the layout of
    the forward one; the filter's cotangent as JAX's own rule computes it."""
    lhs, rhs = res
    params = dict(frozen)
    dn = params["dimension_numbers"]
    rs = dn.rhs_spec
    perm = list(range(rhs.ndim))
    perm[rs[0]], perm[rs[1]] = rs[1], rs[0]
    swapped = jax.lax.optimization_barrier(jnp.transpose(rhs, perm))
    params_sw = dict(params, dimension_numbers=dn._replace(rhs_spec=(rs[1], rs[0]) + tuple(rs[2:])))
    _, vjp_lhs = jax.vjp(lambda l: jax.lax.conv_general_dilated_p.bind(l, swapped, **params_sw), lhs)
    _, vjp_rhs = jax.vjp(lambda r: jax.lax.conv_general_dilated_p.bind(lhs, r, **params), rhs)
    return vjp_lhs(ct)[0], vjp_rhs(ct)[0]


_conv_native.defvjp(_conv_native_fwd, _conv_native_bwd)


def conv_native(lhs: jax.Array, rhs: jax.Array, params: dict) -> jax.Array:
    """``conv_general_dilated(lhs, rhs, **params)`` whose derivative with respect to the input keeps the filter
    in the forward convolution's layout.

    JAX's transpose rule expresses the input's cotangent as a convolution with the input and output feature axes
    of the filter swapped *by its dimension numbers*; XLA's CPU backend transposes such a filter to its fast
    layout outside loops but not inside a loop body (``lax.map``, ``scan``), where the convolution then runs a
    slow generic path — 6–9× slower for the 3×3 convolutions of a ResNet (measured, jaxlib 0.10.2). Same value
    and derivatives as the primitive; a batch-grouped convolution is left to the primitive."""
    if int(params.get("batch_group_count", 1)) != 1:
        return jax.lax.conv_general_dilated_p.bind(lhs, rhs, **params)
    return _conv_native(lhs, rhs, _frozen(params))


# ------------------------------------------------------------------------------------------------ raw layer inputs
@dataclasses.dataclass(frozen=True)
class ConvGeo:
    """Geometry of a convolution whose per-example inputs are kept *raw* (its input pixels ``(T_in, C_in)``, not
    its patches ``(T, taps·C_in)``): 9× smaller for a 3×3 convolution of stride 1, and the Gram of its patches
    is a sum of shifted Grams of pixels (:func:`raw_gram`). ``bias``: a fused bias (a column of ones in the
    patches)."""

    lhs_spec: tuple
    spatial: tuple  # input spatial shape, unpadded
    c_in: int
    taps: tuple
    strides: tuple
    dil: tuple
    pads: tuple  # ((lo, hi), ...) per spatial axis (negative: cropped)
    out: tuple  # output spatial shape
    bias: bool

    @property
    def t_in(self) -> int:
        return int(np.prod(self.spatial, dtype=np.int64))

    @property
    def t_out(self) -> int:
        return int(np.prod(self.out, dtype=np.int64))

    @property
    def n_taps(self) -> int:
        return int(np.prod(self.taps, dtype=np.int64))

    @property
    def d(self) -> int:
        """Features of one patch (taps · input channels, plus the bias column)."""
        return self.n_taps * self.c_in + int(self.bias)


def conv_geo(params: dict, lhs_shape: tuple, taps: tuple, out_spatial: tuple, bias: bool) -> ConvGeo | None:
    """The :class:`ConvGeo` of a convolution evaluated by patches (:func:`conv_ok`), or None."""
    if not conv_ok(params):
        return None
    ls = params["dimension_numbers"].lhs_spec
    return ConvGeo(
        tuple(int(v) for v in ls),
        tuple(int(lhs_shape[d]) for d in ls[2:]),
        int(lhs_shape[ls[1]]),
        tuple(int(t) for t in taps),
        tuple(int(v) for v in params["window_strides"]),
        tuple(int(v) for v in params["rhs_dilation"]),
        tuple((int(lo), int(hi)) for lo, hi in params["padding"]),
        tuple(int(o) for o in out_spatial),
        bool(bias),
    )


def raw_input(lhs: jax.Array, geo: ConvGeo) -> jax.Array:
    """One example's recorded convolution input (batch axis of 1, the primitive's layout) as ``(T_in, C_in)``."""
    ls = geo.lhs_spec
    a = jnp.transpose(lhs, (ls[0],) + tuple(ls[2:]) + (ls[1],))
    return a.reshape(geo.t_in, geo.c_in)


def patches_of(raw: jax.Array, geo: ConvGeo) -> jax.Array:
    """Patches ``(N, T, D)`` (taps, then input channels, then the bias column) of raw inputs ``(N, T_in, C_in)``:
    the layer inputs :func:`conv_patches` gives, by strided slices."""
    n = raw.shape[0]
    a = raw.reshape((n,) + geo.spatial + (geo.c_in,))
    pads = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in geo.pads] + [(0, 0, 0)]
    a = jax.lax.pad(a, jnp.zeros((), a.dtype), pads)
    p = _extract_patches(a, geo.taps, geo.dil, geo.strides).reshape(n, geo.t_out, geo.n_taps * geo.c_in)
    if geo.bias:
        p = jnp.concatenate([p, jnp.ones((n, geo.t_out, 1), p.dtype)], axis=-1)
    return p


def _tap_ranges(geo: ConvGeo, tap: tuple):
    """Per spatial axis ``(first output, end output, first input)`` read by ``tap`` (output ``y`` reads input
    ``s·y + tap·dil − lo``), or None when the tap reads only padding."""
    out = []
    for i, k in enumerate(tap):
        s, off, size = geo.strides[i], k * geo.dil[i] - geo.pads[i][0], geo.spatial[i]
        y0 = max(0, -(off // s))  # first y with s·y + off >= 0
        y1 = min(geo.out[i], -(-(size - off) // s))
        if y1 <= y0:
            return None
        out.append((y0, y1, s * y0 + off))
    return out


def raw_gram(a1: jax.Array, a2: jax.Array, geo: ConvGeo) -> jax.Array:
    """Grams of the patches of two blocks of raw inputs ``(N1, T_in, C)``, ``(N2, T_in, C)``, laid out
    ``(T, N1, T, N2)``: ``<p_it, p_js> = Σ_tap <x_i(t + tap), x_j(s + tap)>`` over the taps both patches read
    inside the input (padding is zero), plus 1 for a fused bias. One Gram of pixels (``T_in² · C`` per pair),
    then one shifted addition per tap: for a 3×3 convolution of stride 1, about 9× fewer FLOPs than the Gram of
    the patches. Positions outermost: each shifted piece is a run of ``N1 · N2``-element rows."""
    from .._common import contract

    n1, n2 = a1.shape[0], a2.shape[0]
    pg = contract("tid,sjd->tisj", jnp.transpose(a1, (1, 0, 2)), jnp.transpose(a2, (1, 0, 2)))
    pg = pg.reshape(geo.spatial + (n1,) + geo.spatial + (n2,))
    ga = jnp.zeros(geo.out + (n1,) + geo.out + (n2,), pg.dtype)
    for tap in np.ndindex(*geo.taps):
        rng = _tap_ranges(geo, tap)
        if rng is None:
            continue
        start = tuple(r[2] for r in rng)
        limit = tuple(r[2] + geo.strides[i] * (r[1] - r[0] - 1) + 1 for i, r in enumerate(rng))
        piece = jax.lax.slice(
            pg, start + (0,) + start + (0,), limit + (n1,) + limit + (n2,), geo.strides + (1,) + geo.strides + (1,)
        )
        dst = tuple(slice(r[0], r[1]) for r in rng)
        ga = ga.at[dst + (slice(None),) + dst + (slice(None),)].add(piece)
    ga = ga.reshape(geo.t_out, n1, geo.t_out, n2)
    return ga + 1 if geo.bias else ga


_SHIFT_COST = 50  # FLOP-equivalents of one shifted addition of raw_gram (memory-bound; measured on CPU, ResNet)


def ga_flops(geo: ConvGeo) -> float:
    """FLOPs (equivalents) per pair of examples of the Gram of patches from raw inputs: the cheaper of
    :func:`raw_gram` and the Gram of the patches."""
    return min(_raw_cost(geo), 2.0 * geo.t_out**2 * geo.d)


def _raw_cost(geo: ConvGeo) -> float:
    return 2.0 * geo.t_in**2 * geo.c_in + _SHIFT_COST * geo.n_taps * geo.t_out**2


def raw_gram_cheaper(geo: ConvGeo) -> bool:
    """Whether :func:`raw_gram` beats forming the patches and taking their Gram (strided convolutions: no)."""
    return _raw_cost(geo) < 2.0 * geo.t_out**2 * geo.d
