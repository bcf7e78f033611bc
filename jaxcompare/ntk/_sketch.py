"""Structured sketch of per-example gradients: a CountSketch of each layer's gradient formed from the layer's factors
(inputs ``A`` and output sensitivities ``Δ_c``) one block of examples at a time, with no transposes of the gradients.

The gradient of logit ``c`` is ``g_c = [g_c^(1); …; g_c^(L); j_c]``: for each structured layer ``l`` (a dense or
convolutional weight with its fused bias) ``g_c^(l) = Σ_t a_t ⊗ δ_{c,t}`` — a ``E × D`` matrix per example and class
(see :mod:`jaxcompare.ntk._structured`) — and ``j_c`` the per-example gradients of the other (fallback) leaves.

**The fold (layers with few positions).** The input columns ``d`` are split into ``r`` chunks of ``w`` slots (a
random permutation ``π`` of the ``r·w ≥ D`` slots, zero where no column lands) and, per chunk ``j``, the output rows
``e`` are placed at ``2·eh ≥ E`` row slots by a random permutation ``σ_j``; inputs carry random signs ``s(d)``,
outputs ``s_j(e)``. Both are applied to the *factors* (a gather of ``A`` and of ``Δ``), so one matrix product
``(C·2eh × r·T) @ (r·T × w)`` gives the sum over chunks of their gradient rows, already permuted and signed. Rows
``[0, eh)`` form half-block ``P``, rows ``[eh, 2eh)`` half-block ``Q``; a half-block (``eh × w``, contiguous) is folded
into ``m = K/2`` buckets by flat position, ``β = (ρ·w + x) mod m``, which is a reshape and a sum because ``eh`` divides
``m`` and ``w = q·k`` with ``q = m/eh`` (``k ≤ eh/2`` coprime to ``eh``); each half-block of a layer is then rolled by
its own uniform random offset. Within a chunk's half-block, entries of one row never collide (``w ≤ m``), nor entries
of one column (``σ·w ≢ 0 mod m`` for ``0 < σ < eh``), and a general pair collides with probability
``(R−1)/((eh−1)(w−1)) ≤ 1/(m−1)`` (``R = eh·w/m = k`` positions per bucket). Entries in different chunks of a
half-block land at ``ρ·w + x`` and ``ρ'·w + x'`` with independent uniform rows, so ``(ρ − ρ')·w`` is uniform over the
``eh`` multiples of ``q`` modulo ``m``: they collide with probability ``1/eh`` when ``x ≡ x' mod q`` and never
otherwise, ``1/m`` over the random column slots; pairs in different half-blocks or layers collide with probability
``1/m`` (the offsets). Summing the chunks inside the product (rather than folding each chunk and rolling it by its
own offset) writes ``r`` times fewer products: on the quarter-width ResNet-18's deepest layers (``T = 16``, ``r = 5``)
the product's output, not its FLOPs, bounded the speed, and the fold ran 1.9× faster (0.84 → 0.45 ms per example).
A layer with more outputs than ``2m`` is cut into groups of at most ``2m`` output rows, each folded as a layer of
its own (own tables and offsets).

**Features.** With ``P``, ``Q`` the sums over layers and chunks, ``φ = [P + Q; P − Q] / √2``, so
``<φ(x), φ(x')> = <P, P'> + <Q, Q'>``: a CountSketch into ``2m = K`` buckets. Signs are independent per column and
per (chunk, row), and the only products of four signs with non-zero mean then pair the entries (two entries of one
row or one column never share a bucket, and "rectangles" ``(d,e), (d',e'), (d,e'), (d',e)`` would need
``2(π(d) − π(d')) ≡ 0 mod m``, impossible for ``w ≤ m/2``). Hence unbiased, and for vectors ``u = g(x)``,
``v = g(x')``::

    Var <φ(x), φ(x')> = Σ_{p≠q} Pr[p, q collide] (u_p² v_q² + u_p v_p u_q v_q)
                      ≤ (1/(K−2)) (‖u‖² ‖v‖² + <u, v>² − 2 Σ_p u_p² v_p²)

— the variance of a dense Rademacher projection with ``K`` rows (``±1/√K``), up to ``K/(K−2)``; pairs within one
row or column, which never collide, make it smaller. (Signs that factor over the layer's inputs and outputs cannot
reach this when one row or column may collide: their four-sign products do not vanish, and on the rank-one
gradients of dense layers the variance grows up to 3× — the TensorSketch/Kronecker penalty.)

**Rows (layers with many positions, or no fold layout).** When a layer has more positions than input slots per
chunk (``T > w``: permuting the factors costs more than the gradient) or when padding would exceed 50 %, the
layer's gradient is formed per example (``(D × T) @ (T × C·E)``), laid out as rows ``(D·E, N·C)`` and
added row by row into ``K`` buckets (a balanced CountSketch: a random permutation of the entries modulo ``K``, random
signs; rows ``< K/2`` go to ``P``); the fallback leaves are CountSketched together the same way.

**Embeddings.** A table ``V × E`` whose only use is a lookup of whole rows (``analyze(embeddings=True)``) is a
dense layer with one-hot inputs: its per-example gradient ``Σ_t e_{k_t} ⊗ δ_{c,t}`` is zero outside the rows the
example reads. Its entries are CountSketched from the token ids and ``δ`` directly, by ``T·E`` signed additions per
class instead of a dense ``V·E`` gradient (the transformer's 1000 × 256 table: 64·256 instead of 256 000); an
out-of-range id of a ``fill`` lookup adds nothing, as in autodiff. Entry ``(k, e)`` is hashed where it is read: two
words of threefry2x32 of the counter ``k`` under a key of column ``e`` give its bucket in ``[0, K)`` and its sign, so
no table of ``V·E`` entries is built (an argsort of 38.6 M words took 26 s per call for GPT-2's 50 257 × 768 table)
and the hash costs one threefry block per nonzero entry. Buckets and signs are then independent and uniform over
the entries (up to the generator): a pair of entries collides with probability ``1/K`` (against the rows and fold
paths' entries too), which gives exactly the variance of a dense Rademacher projection for the table's part.

**Error estimate.** Halves ``a = P + Q`` and ``b = P − Q`` give ``K_a − K_b = 2(<P, Q'> + <Q, P'>)``: mean zero,
uncorrelated with ``K`` (independent signs), with the variance of ``K`` except that it also counts pairs of one
column placed in different half-blocks — so it errs on the side of overestimating (by up to ~1.8× in our tests:
a tiny MLP at ``K`` = 64; about 1× on a small CNN). See :func:`jaxcompare.projected_kernel`.

Cost: the C backward passes (the factors) plus one product per layer, ``2·C·2eh·r·T·w`` FLOPs, and one read of
its ``C·2eh·w`` rows. The fold runs one example at a time (``lax.map`` over the block's factors): a block's folded rows
(hundreds of MB on a ResNet) left the cache and made XLA:CPU's products and folds 4–5× slower. Memory is bounded by
the factors of one chunk (at most 16 examples) plus one example's ``C · max_l (2·eh·w)`` gradient rows and the
block's features, never ``N · C · P``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._precision import policy_precision
from .._validation import check_int, check_key
from ._implementations import _auto_key
from ._memo import memoized
from ._probes import ab_layout, check_output_probes, check_use, probe_matrix
from ._structured import analyze, factors
from ._structured._contract import _per_example_grads

__all__ = ["StructuredProjection", "structured_projection"]


@dataclasses.dataclass(frozen=True)
class _Tuning:
    """How a block is cut, per backend: ``max_block`` examples per compiled call when ``block_size`` is automatic (at
    most, and within the memory budget); ``chunk`` examples whose factors are formed together (a ``lax.map`` over
    chunks); ``fold`` examples folded together (the ``lax.map``'s ``batch_size`` over a chunk's examples)."""

    max_block: int
    chunk: int
    fold: int


# CPU: a chunk of 16 kept the factors' buffers in cache (quarter-width ResNet-18, 2-core CPU: 16 ms per example
# against 19 ms for all 64 at once) and one example folded at a time kept its rows in cache (4-5x faster than a
# block's). An accelerator has no such cache to keep and pays per launch: larger chunks and folds of several examples
# (benchmarks/tune_sketch.py sweeps them on the machine at hand).
_TUNING = {"cpu": _Tuning(64, 16, 1), "accelerator": _Tuning(512, 64, 8)}


def _tuning() -> _Tuning:
    """The block layout of JAX's default backend."""
    return _TUNING["cpu" if jax.default_backend() == "cpu" else "accelerator"]


# block_for's memory estimates by model signature (apply_fn, parameter and input shapes, dim, summed)
_BYTES: collections.OrderedDict = collections.OrderedDict()


# Random tables from random 32-bit words: a uniform permutation of n slots is the argsort of n words' upper 31 bits
# (ties, probability ≤ n²/2³², keep index order), a sign is a word's lowest bit (independent of the upper bits, hence
# of the permutation). All tables of a projection come from one ``jax.random.bits`` call: XLA's CPU compiler spends
# about half a second on each threefry call, and a ResNet-18's tables made with ``permutation``/``rademacher`` per
# layer (≈ 100 calls) took 30 s to compile — longer than sketching a thousand examples.
def _perm(words: jax.Array) -> jax.Array:
    """A uniform random permutation of ``len(words)`` slots (int32) from random uint32 words."""
    return jnp.argsort(words >> 1).astype(jnp.int32)


def _signs(words: jax.Array, dtype) -> jax.Array:
    """``±1`` (``dtype``) from the lowest bit of each word."""
    return (1 - 2 * (words & 1).astype(jnp.int32)).astype(dtype)


def _hash_words(size: int, dim: int) -> int:
    """Random words used by :func:`_hash_tables`."""
    return -(-size // dim) * dim


def _hash_tables(key: jax.Array, size: int, dim: int, words: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``(buckets, signs)`` of one leaf's ``size`` entries: entry ``p`` goes to bucket ``π(p) mod dim`` for a random
    permutation ``π`` of ``ceil(size/dim)·dim`` slots (so every bucket receives at most ``ceil(size/dim)`` entries),
    with sign ``±1``. ``words``: :func:`_hash_words` random uint32 words to use instead of ``key``."""
    padded = _hash_words(size, dim)
    if words is None:
        words = jax.random.bits(key, (padded,), jnp.uint32)
    buckets = _perm(words)[:size] % dim
    signs = _signs(words[:size], jnp.int8)
    return buckets, signs


def _sketch(v: jax.Array, buckets: jax.Array, signs: jax.Array, dim: int) -> jax.Array:
    """CountSketch of the last axis of ``v`` (``(..., P)`` -> ``(..., dim)``)."""
    lead = v.shape[:-1]
    rows = jnp.moveaxis(v.reshape((-1, v.shape[-1])), 0, 1)  # (P, R)
    return jnp.moveaxis(_sketch_rows(rows, buckets, signs, dim), 0, 1).reshape(lead + (dim,))


def _sketch_rows(rows: jax.Array, buckets: jax.Array, signs: jax.Array, dim: int) -> jax.Array:
    """CountSketch of the rows of ``rows`` (``(P, R)`` -> ``(dim, R)``): signed rows added into their buckets (a
    segment sum of whole rows: contiguous vector adds, an order of magnitude faster on CPU than gathering single
    elements)."""
    rows = rows * signs.astype(rows.dtype)[:, None]
    return jax.ops.segment_sum(rows, buckets, num_segments=dim)


def _embed_keys(words: jax.Array, e: int) -> jax.Array:
    """Per-column threefry keys ``(E, 2)`` (uint32 key data) of an embedding table's hash, from two random words."""
    key = jax.random.wrap_key_data(words[:2], impl="threefry2x32")
    return jax.random.key_data(jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(e, dtype=jnp.uint32)))


def _embed_hash(col_keys: jax.Array, k: jax.Array, dim: int) -> tuple[jax.Array, jax.Array]:
    """Buckets (int32 in ``[0, dim)``) and sign bits (0/1) ``(..., E)`` of the table entries ``(k, e)`` for the row
    indices ``k`` (any shape, non-negative): two words of threefry2x32 keyed by column ``e``'s key, of the counter
    ``k``; bucket ``word₀ mod dim`` (bias ≤ dim/2³², negligible), sign the lowest bit of ``word₁``."""
    keys = jax.random.wrap_key_data(col_keys, impl="threefry2x32")  # (E,)
    per_entry = jax.vmap(jax.vmap(jax.random.fold_in, (0, None)), (None, 0))  # (M,) rows x (E,) columns
    w = jax.random.key_data(per_entry(keys, k.reshape(-1).astype(jnp.uint32)))  # (M, E, 2)
    shape = k.shape + (col_keys.shape[0],)
    return (w[..., 0] % dim).astype(jnp.int32).reshape(shape), (w[..., 1] & 1).astype(jnp.int32).reshape(shape)


def _embed_rows(ids: jax.Array, g: jax.Array, col_keys: jax.Array, dim: int) -> jax.Array:
    """CountSketch ``(dim, N·C')`` of an embedding table's per-example gradients ``Σ_t e_{k_t} ⊗ δ_{c,t}`` from the
    token ids ``(N, T, 1)`` (``-1``: out of range, adds nothing) and sensitivities ``(N, C', T, E)``: entry ``(k, e)``
    of the ``V × E`` gradient goes to the bucket and sign of :func:`_embed_hash`, by ``T·E`` additions per class
    instead of ``V·E`` and with no table of ``V·E`` entries (accumulated in at least float32)."""
    n, c, t, e = g.shape
    k = ids[..., 0]
    ok = k >= 0
    buckets, bits = _embed_hash(col_keys, jnp.where(ok, k, 0), dim)  # (N, T, E)
    acc_dt = jnp.promote_types(g.dtype, jnp.float32)
    sg = jnp.where(ok[:, :, None], (1 - 2 * bits).astype(acc_dt), 0)
    vals = jnp.transpose(g, (0, 2, 3, 1)).astype(acc_dt) * sg[..., None]  # (N, T, E, C')
    seg = buckets + dim * jnp.arange(n, dtype=jnp.int32)[:, None, None]  # example n's buckets: n·dim + b
    acc = jax.ops.segment_sum(vals.reshape(n * t * e, c), seg.reshape(-1), num_segments=n * dim)  # (N·dim, C')
    return jnp.transpose(acc.reshape(n, dim, c), (1, 0, 2)).reshape(dim, n * c).astype(g.dtype)


def _layer_rows(a: jax.Array, g: jax.Array) -> jax.Array:
    """Per-example gradients of one structured layer as rows: ``(D·E, N·C')`` with ``[(d, e), (n, c)] =
    Σ_t a[n, t, d] g[n, c, t, e]`` (the generic path, for layers :func:`_layout` cannot fold)."""
    n, c, t, e = g.shape
    m = _per_example_grads(a, g)  # (N, D, C', E)
    return jnp.transpose(m, (1, 3, 0, 2)).reshape(a.shape[-1] * e, n * c)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Static layout of one layer's folded sketch (module docstring): ``r`` chunks of ``w`` input slots, each with
    ``2·eh`` output rows (two half-blocks of ``eh`` rows, each folded into ``m`` buckets: ``eh·w = rh·m``);
    ``groups`` > 1: the outputs cut into that many groups of ``ceil(E/groups)`` rows, each folded as a layer of its
    own (own tables and offsets) with this layout."""

    r: int
    w: int
    eh: int
    m: int
    groups: int = 1

    @property
    def rh(self) -> int:
        return self.eh * self.w // self.m


def _layout(d: int, e: int, m: int) -> _Layout | None:
    """The fold layout of a ``D × E`` layer gradient into ``m`` buckets, or None when there is none (``E > 2m`` or
    ``m < 2``). ``eh``: the smallest divisor of ``m`` with ``2·eh ≥ E``; ``w = (m/eh)·k`` with ``k ≤ eh/2`` coprime
    to ``eh`` (so ``w ≤ m/2``, ``eh·w ≡ 0 mod m``, and rows ``σ`` apart land ``σ·w ≢ 0 mod m`` apart)."""
    if m < 2:
        return None
    divisors = [v for v in range(2, m + 1) if m % v == 0 and 2 * v >= e]
    if not divisors:
        return None
    eh = divisors[0]
    q = m // eh
    ks = [k for k in range(1, eh // 2 + 1) if math.gcd(k, eh) == 1]
    r = -(-d // (q * ks[-1]))
    k = next(k for k in ks if q * k * r >= d)
    return _Layout(r=r, w=q * k, eh=eh, m=m)


def _fold_choice(d: int, t: int, e: int, m: int) -> _Layout | None:
    """The fold layout when it is the cheaper path for a ``D × E`` layer with ``T`` positions, else None (the rows
    path): the fold permutes the factors (``T·(D + C·E)`` numbers) and pads the gradient to ``2·eh·r·w`` entries,
    so it pays when there are fewer positions than input slots per chunk and the padding is under 50%. More outputs
    than ``2m`` (a transformer's MLP at K < 4d) are cut into groups of at most ``2m`` rows, each folded on its own."""
    groups = max(1, -(-e // (2 * m)))
    lay = _layout(d, -(-e // groups), m)
    if lay is None or t > lay.w or groups * 2 * lay.eh * lay.r * lay.w > 1.5 * d * e:
        return None
    return dataclasses.replace(lay, groups=groups)


def _fold_words(lay: _Layout) -> int:
    """Random words used by :func:`_fold_tables`."""
    return lay.groups * (lay.r * lay.w + lay.r * 2 * lay.eh + 2)


def _fold_tables(key: jax.Array, lay: _Layout, d: int, e: int, dtype, words: jax.Array | None = None) -> tuple:
    """Random parts of one layer's fold: input slots (``r·w`` column indices, ``d`` = zero), input signs, output
    rows per chunk (``(r, 2·eh)`` row indices, ``e`` = zero), output signs and the two half-blocks' offsets; with
    ``groups`` > 1, independent tables per group of ``ceil(E/groups)`` outputs, stacked on a leading axis.
    ``words``: :func:`_fold_words` random uint32 words to use instead of ``key``."""
    if words is None:
        words = jax.random.bits(key, (_fold_words(lay),), jnp.uint32)
    if lay.groups > 1:
        one = dataclasses.replace(lay, groups=1)
        eg = -(-e // lay.groups)
        return jax.vmap(lambda w: _fold_tables(None, one, d, eg, dtype, w))(words.reshape(lay.groups, -1))
    n_in, n_out = lay.r * lay.w, lay.r * 2 * lay.eh
    w_in, w_out, w_off = words[:n_in], words[n_in : n_in + n_out].reshape(lay.r, 2 * lay.eh), words[n_in + n_out :]
    perm = _perm(w_in)
    cols = jnp.where(perm < d, perm, d)
    s_in = _signs(w_in, dtype)
    rows = jax.vmap(_perm)(w_out)
    rows = jnp.where(rows < e, rows, e)
    s_out = _signs(w_out, dtype)
    offsets = ((w_off >> 1) % lay.m).astype(jnp.int32)  # (2,): bias ≤ m/2³¹, negligible
    return cols, s_in, rows, s_out, offsets


def _fold_layer(a: jax.Array, g: jax.Array, lay: _Layout, tables: tuple) -> jax.Array:
    """Folded sketch of one layer for a block: ``(N, C', 2, m)`` (the two half-block outputs ``P``, ``Q``).

    One product ``(C'·2eh × r·T) @ (r·T × w)`` of the permuted, signed factors gives the sum over chunks of their
    gradient rows; each half-block (``eh × w``, contiguous) is folded modulo ``m`` by a reshape and a sum, and rolled
    by its random offset. ``groups`` > 1: the sum of the groups' folds, each over its ``ceil(E/groups)`` outputs."""
    if lay.groups > 1:
        one, eg = dataclasses.replace(lay, groups=1), -(-g.shape[-1] // lay.groups)
        gp = jnp.pad(g, [(0, 0)] * 3 + [(0, lay.groups * eg - g.shape[-1])])  # the last group's missing rows: zero
        out = None
        for j in range(lay.groups):  # one group's product and fold at a time
            tab_j = tuple(v[j] for v in tables)
            s = _fold_layer(a, gp[..., j * eg : (j + 1) * eg], one, tab_j)
            out = s if out is None else out + s
        return out
    cols, s_in, rows, s_out, offsets = tables
    n, c, t, e = g.shape
    zero_a = jnp.zeros((n, t, 1), a.dtype)
    a3 = jnp.take(jnp.concatenate([a, zero_a], axis=-1), cols, axis=-1) * s_in[None, None, :]  # (N, T, r·w)
    a3 = jnp.transpose(a3.reshape(n, t, lay.r, lay.w), (0, 2, 1, 3)).reshape(n, lay.r * t, lay.w)  # (N, r·T, w)
    zero_g = jnp.zeros((n, c, t, 1), g.dtype)
    g3 = jnp.take(jnp.concatenate([g, zero_g], axis=-1), rows.reshape(-1), axis=-1)  # (N, C', T, r·2eh)
    g3 = g3.reshape(n, c, t, lay.r, 2 * lay.eh) * s_out[None, None, None]
    g3 = jnp.transpose(g3, (0, 1, 4, 3, 2)).reshape(n, c * 2 * lay.eh, lay.r * t)  # (N, C'·2eh, r·T)
    mm = jnp.einsum("nek,nkd->ned", g3, a3, precision=policy_precision())  # (N, C'·2eh, w)
    y = mm.reshape(n, c, 2, lay.rh, lay.m).sum(axis=3)  # (N, C', 2, m): a bitcast and a sum
    idx = (jnp.arange(lay.m)[None, :] - offsets[:, None]) % lay.m  # roll half-block h by its offset
    return jnp.take_along_axis(y, jnp.broadcast_to(idx[None, None], y.shape), axis=-1)


def block_bytes(plan: Any, shapes: tuple, dim: int, summed: bool, itemsize: int, fold: int = 1) -> tuple[int, int]:
    """Estimated peak bytes of a block: ``(per example, fixed)``. Per example: activations kept for the backward
    passes, the factors, the largest rows-path layer's gradient rows and the features. Fixed: the largest folded
    layer's permuted factors and gradient rows, formed ``fold`` examples at a time."""
    a_shapes, g_shapes, j_shapes = shapes
    # backward passes per example: 1 summed, C per output, or p output probes (the factors' class axis)
    c = g_shapes[0].shape[1] if g_shapes else j_shapes[0].shape[1] if j_shapes else 1 if summed else plan.n_classes
    act = sum(int(np.prod(s[0], dtype=np.int64)) for e in plan.prog.eqns for s in e.shapes)
    fac = sum(int(np.prod(s.shape[1:], dtype=np.int64)) for s in (*a_shapes, *g_shapes, *j_shapes))
    rows_layer = fold_layer = 0
    for u, a, g in zip(plan.uses, a_shapes, g_shapes):
        d, t, e = a.shape[-1], g.shape[2], g.shape[-1]
        lay = None if u.kind == "embed" else _fold_choice(d, t, e, dim // 2)
        if u.kind == "embed":  # signed values and their sums per class, hash words, buckets and signs: T·E each
            rows_layer = max(rows_layer, 2 * c * t * e + 6 * t * e)
        elif lay is None:
            rows_layer = max(rows_layer, 4 * max(c * d * e, -(-c * d * e // dim) * dim))
        else:
            rows = 2 * lay.eh
            padded = c * t * e if lay.groups > 1 else 0  # the sensitivities padded to whole groups
            fold_layer = max(
                fold_layer, 2 * c * rows * lay.w + 2 * c * rows * lay.r * t + 2 * lay.r * lay.w * t + padded
            )
    return itemsize * ((2 + c) * act + 2 * fac + rows_layer + 4 * c * dim), itemsize * fold_layer * fold


class _Static(collections.namedtuple("_Static", "plan a_s g_s j_s emb lays dt sizes fb_size")):
    """A model's sketch layout (:meth:`StructuredProjection._layout`): its analysis, factor shapes, per-layer path
    (``emb``; ``lays``: fold layout or None for the rows path), the fold tables' dtype and the rows path's hashed
    sizes."""


# jitted table builders by model signature (apply_fn, parameter and input shapes, dim, summed)
_BUILDERS: collections.OrderedDict = collections.OrderedDict()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StructuredProjection:
    """A CountSketch of per-example gradients computed from the structured layer factors (see module docstring).

    Attributes:
      key: typed PRNG key; every hash table comes from one ``jax.random.bits(key, ...)`` call.
      dim: feature dimension ``K`` (even, so that the two halves give an error estimate).
      block_size: examples per compiled call (their factors formed ``min(block_size, 16)`` at a time; memory grows
        with both); None: automatic from the memory budget (:meth:`block_for`).
      memory_budget: bytes for the automatic block size (None: :func:`jaxcompare.ntk._memory.memory_budget`).
      output_probes: ``p`` random combinations of the outputs in place of the ``C`` per-output gradients
        (:mod:`jaxcompare.ntk._probes`): features ``(N, p/2, dim)``; None: one per output, ``(N, C, dim)``.
      tables: the hash tables derived from ``key`` for one model and input shape (:meth:`prepared`), or None: built
        inside every call of :meth:`features` (an argsort of one random word per hashed entry).
    """

    key: jax.Array
    dim: int = dataclasses.field(metadata=dict(static=True))
    block_size: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    memory_budget: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    output_probes: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    tables: Any = dataclasses.field(default=None, repr=False)  # one model's hash tables, built once (:meth:`prepared`)

    kind = "structured"
    # the hash layout: features of two layouts are two different sketches, never to be mixed in one store
    # (1: each chunk of a layer folded and rolled by its own offsets, embedding tables as dense leaves, until
    # 2026-11-30; 2: the chunks summed in one product, one offset per half-block, embedding tables sketched from their
    # token ids through the rows path's permutation, until 2026-11-30; 3: embedding entries hashed by threefry of
    # their (row, column), no V·E table, for an hour; 4: layers with more than K outputs folded in groups, not
    # sketched from their per-example gradients). project_gradients(path=) fingerprints it (see _project_disk).
    layout = 4

    def block_for(self, apply_fn: Callable, params: Any, x: Any, *, summed: bool = False, held: bool = True) -> int:
        """Examples per call: ``block_size``; else 64 (or all of ``x`` when fewer) when the factors of 16 examples
        fit the memory budget, else as many examples as fit. ``held``: the features of all of ``x`` stay in memory
        (their bytes count against the budget); False when they go to disk block by block. When not even one
        example's factors fit, one example per call, with a warning."""
        from ._memory import memory_budget

        n = x.shape[0]
        if self.block_size is not None:
            return min(self.block_size, n)
        tune = _tuning()

        probes = self.output_probes

        def estimate():  # the model's analysis takes about a second on a ResNet: once per model and shapes
            plan = analyze(apply_fn, params, tuple(x.shape[1:]), x.dtype, embeddings=True)
            if probes is not None:
                check_use(probes, plan.n_classes, summed)
            seeds = None if probes is None else jax.ShapeDtypeStruct((probes, plan.n_classes), jnp.float32)
            shapes = jax.eval_shape(
                lambda p, xx, sd: factors(plan, p, xx, summed=summed, seeds=sd), params, x[:1], seeds
            )
            itemsize = max(jnp.dtype(jax.eval_shape(apply_fn, params, x[:1]).dtype).itemsize, 4)
            # feature rows per example: one per class, or all p probes' rows (before each set's half is taken)
            rows = plan.n_classes if probes is None else probes
            return (*block_bytes(plan, shapes, self.dim, summed, itemsize, tune.fold), rows, itemsize)

        key = (_auto_key(apply_fn, params, x, None, None), self.dim, bool(summed), probes, tune)
        per, fixed, n_classes, itemsize = memoized(_BYTES, key, estimate)
        total = memory_budget(self.memory_budget)
        features = 2 * n * n_classes * self.dim * itemsize if held else 0
        budget = total - features - fixed
        fit = int(budget // max(per, 1))  # examples whose factors fit at once
        if fit < 1:
            warnings.warn(
                f"the memory budget ({total / 2**30:.2f} GiB) leaves no room for the structured sketch's factors of "
                f"one example ({per / 2**20:.1f} MiB"
                + (f", after the features of all {n} examples: {features / 2**30:.2f} GiB" if held else "")
                + "); computing one example per call, which may exceed it. "
                + ("Write the features to disk (path=), or " if held else "")
                + "raise the budget (memory_budget=, JAXCOMPARE_MEMORY_BUDGET).",
                RuntimeWarning,
                stacklevel=3,
            )
            fit = 1
        if fit < tune.chunk or n <= tune.chunk:
            return min(n, fit)
        # whole chunks fit: more examples per call cost only their features; whole chunks (no padded chunk per call)
        return n if n <= tune.max_block else tune.max_block

    def _layout(self, apply_fn: Callable, params: Any, x: jax.Array, summed: bool) -> _Static:
        """The model's analysis and the static layout of its sketch (per layer: embed, fold or rows path)."""
        plan = analyze(apply_fn, params, tuple(x.shape[1:]), x.dtype, embeddings=True)
        a_s, g_s, j_s = jax.eval_shape(lambda p, xx: factors(plan, p, xx, summed=summed), params, x[:1])
        if not plan.uses and not plan.fallback:
            raise ValueError("params has no differentiable leaf used by apply_fn: there is nothing to project.")
        emb = tuple(u.kind == "embed" for u in plan.uses)  # token ids and δ: the embed path (module docstring)
        m = self.dim // 2
        lays = tuple(
            None if em else _fold_choice(a.shape[-1], g.shape[2], g.shape[-1], m) for a, g, em in zip(a_s, g_s, emb)
        )
        dt = jnp.result_type(*[a for a, em in zip(a_s, emb) if not em], *g_s) if g_s else jnp.float32
        sizes = tuple(0 if em else a.shape[-1] * g.shape[-1] for a, g, em in zip(a_s, g_s, emb))  # hashed entries
        return _Static(plan, a_s, g_s, j_s, emb, lays, jnp.dtype(dt), sizes, sum(j.shape[-1] for j in j_s))

    def _build(self, lo: _Static, key: jax.Array) -> tuple:
        """``(tables per structured use, table of the fallback leaves or None)`` from ``key``: every table from one
        ``jax.random.bits`` call (see :func:`_perm`), layer ``u``'s words, then the fallback leaves'."""
        need = [
            2 if em else _hash_words(sz, self.dim) if lay is None else _fold_words(lay)
            for sz, lay, em in zip(lo.sizes, lo.lays, lo.emb)
        ]
        need.append(_hash_words(lo.fb_size, self.dim) if lo.j_s else 0)
        words = jax.random.bits(key, (sum(need),), jnp.uint32)
        starts = np.concatenate([[0], np.cumsum(need)]).astype(int)
        tables = [
            _embed_keys(words[starts[u] : starts[u + 1]], g.shape[-1])
            if em
            else _hash_tables(None, sz, self.dim, words[starts[u] : starts[u + 1]])
            if lay is None
            else _fold_tables(None, lay, a.shape[-1], g.shape[-1], lo.dt, words[starts[u] : starts[u + 1]])
            for u, (a, g, sz, lay, em) in enumerate(zip(lo.a_s, lo.g_s, lo.sizes, lo.lays, lo.emb))
        ]
        # the fallback leaves (often many small ones: norms) are sketched together, as one concatenated vector
        fb_table = _hash_tables(None, lo.fb_size, self.dim, words[starts[-2] :]) if lo.j_s else None
        return tables, fb_table

    def prepared(self, apply_fn: Callable, params: Any, x: jax.Array, *, summed: bool = False) -> StructuredProjection:
        """This projection with its hash tables built once for ``apply_fn`` and the shapes of ``params`` and ``x``
        (:func:`project_gradients` does it before its blocks: otherwise every block's program rebuilds them, an
        argsort of one random word per entry of the rows path — a second for a few million). Same features."""
        one = jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)  # the tables do not depend on N
        memo_key = (_auto_key(apply_fn, params, one, None, None), self.dim, bool(summed))

        def builder():  # the model's layout (a trace of its factor program, ~1 s on a ResNet): once per signature
            return jax.jit(functools.partial(self._build, self._layout(apply_fn, params, x, summed)))

        return dataclasses.replace(self, tables=memoized(_BUILDERS, memo_key, builder, size=16)(self.key))

    def features(self, apply_fn: Callable, params: Any, x: jax.Array, *, summed: bool = False) -> jax.Array:
        """Sketched gradients ``(N, C, dim)`` (``(N, dim)`` when ``summed``: of the summed logits; ``(N, p/2, dim)``
        with ``output_probes=p``)."""
        lo = self._layout(apply_fn, params, x, summed)
        plan, emb, lays = lo.plan, lo.emb, lo.lays
        seeds = None
        if self.output_probes is not None:
            check_use(self.output_probes, plan.n_classes, summed)
            seeds = probe_matrix(self.key, self.output_probes, plan.n_classes, jnp.float32)
        n = x.shape[0]
        bs = self.block_for(apply_fn, params, x, summed=summed)
        half = self.dim // 2
        tune = _tuning()
        if self.tables is None:
            tables, fb_table = self._build(lo, self.key)
        else:  # prepared: the tables must be those of this model and input shape
            want = jax.eval_shape(functools.partial(self._build, lo), self.key)
            got = self.tables
            if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(want) or any(
                (g.shape, g.dtype) != (w.shape, w.dtype)
                for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want))
            ):
                raise ValueError(
                    "this projection's tables were prepared for another model or input shape; call "
                    "projection.prepared(apply_fn, params, x) for this one, or use the projection without tables."
                )
            tables, fb_table = got
        scale = 1.0 / np.sqrt(2.0)

        def sketch_rows(rows, tabs):  # (P, N·C') -> (2·half, N·C'): signed rows added into their buckets
            return _sketch_rows(rows, tabs[0], tabs[1], self.dim)

        def block(xb):
            a, g, j = factors(plan, params, xb, summed=summed, seeds=seeds)
            mb, c = xb.shape[0], (g[0] if g else j[0]).shape[1]
            rows_out = None  # (2·half, m·C'): layers without a fold layout and the fallback leaves
            pq = None  # (m, C', 2, half): the folded layers' half-block outputs P, Q
            for u in range(len(a)):  # one layer's gradient rows alive at a time
                if emb[u]:
                    s = _embed_rows(a[u], g[u], tables[u], self.dim)
                    rows_out = s if rows_out is None else rows_out + s
                elif lays[u] is None:
                    s = sketch_rows(_layer_rows(a[u], g[u]), tables[u])
                    rows_out = s if rows_out is None else rows_out + s
            folded = [u for u in range(len(a)) if lays[u] is not None]
            if folded:  # one example at a time: its gradients stay in cache (a block's would not)

                def one(ag):
                    out = None
                    for u, a1, g1 in zip(folded, *ag):
                        s = _fold_layer(a1[None], g1[None], lays[u], tables[u])[0]
                        out = s if out is None else out + s
                    return out

                fold = min(tune.fold, mb)
                pq = jax.lax.map(
                    one, ([a[u] for u in folded], [g[u] for u in folded]), batch_size=fold if fold > 1 else None
                )
            if j:
                rows = jnp.concatenate([jnp.transpose(jm, (2, 0, 1)).reshape(jm.shape[2], -1) for jm in j])
                s = sketch_rows(rows, fb_table)
                rows_out = s if rows_out is None else rows_out + s
            if rows_out is not None:  # its two halves of buckets are a further P, Q
                r_ = jnp.transpose(rows_out.reshape(2, half, mb, c), (2, 3, 0, 1))
                pq = r_ if pq is None else pq + r_
            p_, q_ = pq[:, :, 0], pq[:, :, 1]  # half a = P + Q, half b = P − Q: uncorrelated (module docstring)
            out = jnp.concatenate([p_ + q_, p_ - q_], axis=-1) * jnp.asarray(scale, pq.dtype)
            return out  # (m, C', dim)

        ch = min(bs, tune.chunk)
        nb = -(-n // ch)
        if nb == 1:
            phi = block(x)
        else:
            xp = jnp.concatenate([x, jnp.broadcast_to(x[:1], (nb * ch - n,) + x.shape[1:])]) if nb * ch > n else x
            phi = jax.lax.map(block, xp.reshape((nb, ch) + x.shape[1:]))
            phi = phi.reshape((nb * ch,) + phi.shape[2:])[:n]
        if seeds is not None:
            return ab_layout(phi)
        return phi[:, 0] if summed else phi


def structured_projection(
    key: Any,
    dim: int,
    *,
    block_size: int | None = None,
    memory_budget: int | str | None = None,
    output_probes: int | None = None,
) -> StructuredProjection:
    """A structured sketch of per-example gradients: the fast, linear-in-N projection (see
    :mod:`jaxcompare.ntk._sketch` for the construction and its variance).

    Each layer's gradient is formed from its permuted, signed factors (inputs and output sensitivities) for one
    block of examples at a time, directly in the sketch's layout, and folded into ``dim`` buckets (a reshape and a
    sum: no per-example gradient is transposed or scattered); embedding tables from their token ids (the nonzero rows
    of their gradients only); layers with many positions and leaves without that structure (norms, shared weights)
    are CountSketched from their per-example gradients.
    ``E[<φ(x), φ(x')>] = <g(x), g(x')>`` with (at most) the variance of a dense Rademacher projection of the same
    dimension, at ``O(P)`` instead of ``O(dim · P)`` per gradient.
    Pass it as ``projection=`` to :func:`trace_ntk`/:func:`pseudo_ntk`, or to :func:`project_gradients`.

    Args:
      key: PRNG key (``jax.random.key(seed)``).
      dim: feature dimension ``K`` (even, ``>= 2``): the two halves give the error estimate of
        :func:`projected_kernel`.
      block_size: examples per compiled call, their factors formed at most 16 at a time (memory ``∝ block_size``);
        default: 64 when the factors of 16 examples fit the memory budget, else as many as fit.
      memory_budget: bytes (or ``"2G"``, or a fraction of the available memory) for the automatic block size;
        default ``JAXCOMPARE_MEMORY_BUDGET`` or half the available memory.
      output_probes: ``p`` (even, ``>= 2``, fewer than the model's outputs): sketch the trace over outputs with
        ``p`` random ±1 combinations of them — ``p`` backward passes per example instead of one per output
        (:mod:`jaxcompare.ntk._probes`). Features ``(N, p/2, dim)``; their trace kernel stays unbiased for the
        trNTK⁰, with added variance from the kernel between different outputs, which :func:`projected_kernel`'s
        error estimate includes. For :func:`trace_ntk` and :func:`project_gradients`, not the pNTK (``summed``).
        Per-token logits ``(N, L, C)`` are ``L·C`` outputs: there the saving is largest.

    Returns:
      A :class:`StructuredProjection`.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> proj = jc.structured_projection(jax.random.key(1), 256)
      >>> K = jc.trace_ntk(apply_fn, projection=proj)(params, x)
      >>> K.shape
      (10, 10)
      >>> bool(jnp.abs(K - jc.trace_ntk(apply_fn)(params, x)).max() < 0.1)   # close to the exact trNTK
      True

    References:
      M. Charikar, K. Chen, M. Farach-Colton, "Finding frequent items in data streams", ICALP 2002.
      D. Kane, J. Nelson, "Sparser Johnson–Lindenstrauss transforms", J. ACM 61(1), 2014.
      S. M. Park et al., "TRAK: Attributing model behavior at scale", ICML 2023 (projected gradients).
    """
    from ._memory import memory_budget as _budget

    key = check_key(key)
    dim = check_int(dim, "dim", min=2)
    if dim % 2:
        raise ValueError(f"dim must be even (its two halves give the error estimate), got dim={dim}.")
    if block_size is not None:
        block_size = check_int(block_size, "block_size", min=1)
    if memory_budget is not None:
        memory_budget = _budget(memory_budget)
    output_probes = check_output_probes(output_probes)
    return StructuredProjection(
        key=key, dim=dim, block_size=block_size, memory_budget=memory_budget, output_probes=output_probes
    )
