"""Structured kernels from compact per-block features: each layer stored in the cheapest exact form, each block's
factors computed once, tiles contracted from the stored features.

For a structured layer with ``T`` positions, ``D`` input and ``E`` output features (``C'`` classes), the gradient of
one example is ``g_c = Σ_t a_t ⊗ δ_{c,t}``. Three exact layouts of what is kept per example (its *feature*):

- ``grad``: the per-example gradient, ``C'·D·E`` floats; ``C'·D·E`` multiply-adds per pair of examples; formed
  once per example (``2 C' T D E`` FLOPs).
- ``pos``: the factors, ``T·D + C'·T·E`` floats; ``T²(D + C'·E)`` per pair (a Gram of positions).
- ``lazy``: the factors, ``T·D + C'·T·E`` floats; ``C'·D·E`` per pair, the gradient re-formed once per tile.

:func:`choose_kinds` takes ``pos`` where it needs no more FLOPs than ``grad`` (dense layers, ``T = 1``; late
convolution stages with few positions and many channels), else ``grad`` or (when allowed) ``lazy`` where the
factors are at least twice smaller than the gradient and ``T ≤`` rows per block; the planner (:mod:`._planner`)
decides between the plans with and without ``lazy`` layers by modelled FLOPs under the memory budget. A *layer*
is one use, or several dense uses of the same input side by side (e.g. query, key and value projections:
:func:`._layouts.groups`), whose inputs are then kept once.
A convolution in the ``pos`` or ``lazy`` layout keeps its *raw* inputs ``(T_in, C_in)`` (9× fewer floats than the
3×3 patches, :func:`._layouts.layer_geos`); its patches are formed from them when its gradients are, and its Gram
of positions is a sum of shifted Grams of pixels (:func:`._patches.raw_gram`) where that is cheaper (stride 1).
Fallback leaves (norm scales, shared weights) are per-example gradients (``grad``). Embedding tables used once
(:mod:`._embed`) are layers whose inputs are token ids: ``D`` is the number of rows, the factors ``T + C'·T·E``,
the Gram of positions is token equality (``T²(1 + C'·E)`` per pair), the gradient a segment sum.

Trace kernels may compute the factors a chunk of classes at a time (:mod:`._planner`): the kernel is the sum of the
chunks' kernels, memory is divided by the number of chunks, each chunk costs one more forward pass. The planner
chooses the chunk and the layouts by a FLOP model under the memory budget.

Features are computed by ``lax.map`` over chunks of examples (the factors of one chunk alive at a time, reduced to
the layouts right away), so peak memory is the stored features plus one chunk, never ``N`` times the activations.
:func:`blocked` is the eager engine of :func:`jaxcompare.batched` and of eager default calls: the features of a
block are computed once; as many blocks as the budget allows stay resident (a *panel*), the others are streamed past
it, so memory is bounded by the budget and the block, not by ``N``. Within a panel the ``lazy`` layers are taken one
at a time and in slices of their output features, so that all the panel's blocks' gradients of one slice fit the
memory set aside for two blocks' whole gradients: each block's gradients are formed once for all the panel's tiles.
A layer whose inputs are not a convolution's raw inputs runs as one program for the whole panel: a loop over slices
of at most 128 output features, each slice formed and multiplied while it is in cache. When one panel holds every
block and the classes come in chunks, the layers' inputs of the first chunk serve the others (they do not depend on
the class). A block streamed past the panel takes its column of tiles: its gradients formed once for the column,
each panel block's once per tile. The per-example-gradient product, each Gram-of-positions layer, each lazy layer's
gradients and their products run as programs of their own (XLA:CPU slows a large product down ~10× when a Gram of
positions shares its program). On CPU the programs are compiled before the panel is planned and the resident memory
that compiling added is taken from the budget, and what the panel leaves of the budget widens the chunks of the
factor computation; freed heap memory is handed back before and after a call, and the programs run one at a time.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..._precision import accumulation_dtype
from .._common import contract, gram_rows
from ._analysis import Plan, analyze
from ._embed import embed_diag, embed_equal, embed_grad
from ._factors import example_factors
from ._layouts import (
    _LAZY_SLICES,
    _POS_ELEMENTS,
    GRAD,
    LAZY,
    POS,
    Setup,
    _capacity,
    _chunk,
    _setup,
    _sym_cuts,
    _tile_bytes,
    choose_kinds,
    dims,
    grouped,
    groups,
    tile_room_bytes,
    vocabs,
    wider_chunk,
)
from ._patches import patches_of, raw_gram, raw_gram_cheaper
from ._planner import panels

__all__ = ["choose_kinds", "features", "tile", "kernel", "diag", "blocked", "estimate"]


# ------------------------------------------------------------------------------------------------ features and tiles
def _peg(a: jax.Array, g: jax.Array) -> jax.Array:
    """Per-example gradient ``Σ_t a_t ⊗ g_ct`` of one example as ``(C', D·E)``: ``(D × T) @ (T × C'E)``."""
    c, t, e = g.shape
    m = contract("dt,tk->dk", a.T, jnp.transpose(g, (1, 0, 2)).reshape(t, c * e))  # (D, C'E), >= float32
    m = m.astype(jnp.result_type(a, g))  # kept in the factors' dtype (accumulated in at least float32)
    return jnp.transpose(m.reshape(a.shape[1], c, e), (1, 0, 2)).reshape(c, -1)


def _grad_of(a: jax.Array, g: jax.Array, vocab: int) -> jax.Array:
    """:func:`_peg`, or an embedding's gradient (``vocab`` rows) as ``(C', V·E)``."""
    if not vocab:
        return _peg(a, g)
    return jnp.transpose(embed_grad(a, g, vocab), (1, 0, 2)).reshape(g.shape[0], -1)


def features(
    plan: Plan,
    params: Any,
    x: jax.Array,
    summed: bool,
    kinds: tuple,
    chunk: int,
    full: bool = False,
    classes: tuple | None = None,
    raw: tuple = (),
    inputs: bool = True,
):
    """``(dense, facs)`` of a block: ``dense`` the per-example gradients of the ``grad`` uses and fallback leaves
    side by side, ``(N, C'·P_dense)`` (``full``: ``(N, C', P_dense)``; None when there are none), ``facs[u]``
    ``(A, G)`` for ``pos``/``lazy`` uses (None for ``grad``). Two-dimensional ``dense`` keeps the tile's product a
    plain ``A Bᵀ`` (XLA copies an operand of a product contracting two axes). ``classes = (start, size)``: the
    factors of one chunk of classes (trace kernels, :mod:`._planner`). ``raw[u]`` (:attr:`Setup.raw`): the layer's
    ``A`` are its raw inputs ``(T_in, C_in)``. ``inputs=False``: every ``A`` is None (they do not depend on the
    class: the engine keeps those of its first chunk of classes for the others, and XLA drops their work)."""
    leaves = jax.tree_util.tree_leaves(params)
    voc = vocabs(plan)
    raw_uses = frozenset(grp[0] for grp, g in zip(groups(plan), raw) if g is not None)

    def one(xi):
        a, g, j = example_factors(plan, leaves, xi, summed=summed, classes=classes, raw=raw_uses)
        a, g = grouped(plan, a, g)
        dense = [_grad_of(a[u], g[u], voc[u]) for u, k in enumerate(kinds) if k == GRAD] + list(j)
        facs = tuple(None if k == GRAD else (a[u] if inputs else None, g[u]) for u, k in enumerate(kinds))
        if not dense:
            return None, facs
        dense = jnp.concatenate(dense, axis=-1)
        return (dense if full else dense.reshape(-1)), facs

    return jax.lax.map(one, x, batch_size=min(chunk, x.shape[0]))


def _pos_pair(a1, g1, a2, g2, full: bool, vocab: int = 0, geo=None) -> jax.Array:
    """Gram of positions ``Σ_{t,s} <a_it, a_js> Σ_c <g_cit, g_cjs>`` (``T = 1``: also the full class blocks), in
    row slices that keep the ``rows × N2 × T²`` intermediate bounded; ``vocab``: ``a`` are token ids and
    ``<a_it, a_js>`` is their equality (:mod:`._embed`); ``geo``: ``a`` are a convolution's raw inputs, whose
    patches' Gram is a sum of shifted Grams of pixels (:func:`._patches.raw_gram`) where that is cheaper."""
    n1, c, t, e = g1.shape
    n2 = g2.shape[0]
    if geo is not None and (t == 1 or full or not raw_gram_cheaper(geo)):
        a1, a2, geo = patches_of(a1, geo), patches_of(a2, geo), None
    if geo is not None:
        rows = max(1, min(n1, _POS_ELEMENTS // max(1, n2 * max(t * t, geo.t_in**2))))
        g2t = jnp.transpose(g2, (2, 0, 1, 3))  # (s, j, c, e): products laid out like the Gram of pixels
        out = []
        for r in range(0, n1, rows):
            ga = raw_gram(a1[r : r + rows], a2, geo)  # (t, i, s, j)
            gg = contract("tice,sjce->tisj", jnp.transpose(g1[r : r + rows], (2, 0, 1, 3)), g2t)
            out.append(jnp.sum(ga * gg, axis=(0, 2)))
        return out[0] if len(out) == 1 else jnp.concatenate(out, axis=0)
    if vocab:
        rows = max(1, min(n1, _POS_ELEMENTS // max(1, n2 * t * t)))
        out = []
        for r in range(0, n1, rows):
            eq = embed_equal(a1[r : r + rows], a2, g1.dtype)
            if full:
                out.append(contract("itjs,itjscd->ijcd", eq, contract("icte,jdse->itjscd", g1[r : r + rows], g2)))
            else:
                out.append(jnp.sum(eq * contract("icte,jcse->itjs", g1[r : r + rows], g2), axis=(1, 3)))
        return out[0] if len(out) == 1 else jnp.concatenate(out, axis=0)
    if t == 1:
        ga = contract("id,jd->ij", a1[:, 0], a2[:, 0])
        if full:
            return ga[:, :, None, None] * contract("ice,jde->ijcd", g1[:, :, 0], g2[:, :, 0])
        return ga * contract("ip,jp->ij", g1.reshape(n1, -1), g2.reshape(n2, -1))
    rows = max(1, min(n1, _POS_ELEMENTS // max(1, n2 * t * t)))
    out = []
    for r in range(0, n1, rows):  # (i, t, j, s): the products' natural order, no transposed copies
        ga = contract("itd,jsd->itjs", a1[r : r + rows], a2)
        gg = contract("icte,jcse->itjs", g1[r : r + rows], g2)
        out.append(jnp.sum(ga * gg, axis=(1, 3)))
    return out[0] if len(out) == 1 else jnp.concatenate(out, axis=0)


def _peg_dce(a: jax.Array, g: jax.Array, vocab: int = 0, geo=None) -> jax.Array:
    """Per-example gradient of one example as ``(D, C', E)`` (no transposition of the product); ``geo``: ``a``
    are a convolution's raw inputs (their patches formed first)."""
    if geo is not None:
        a = patches_of(a[None], geo)[0]
    if vocab:
        return embed_grad(a, g, vocab)
    c, t, e = g.shape
    m = contract("dt,tk->dk", a.T, jnp.transpose(g, (1, 0, 2)).reshape(t, c * e))
    return m.astype(jnp.result_type(a, g)).reshape(a.shape[1], c, e)


def _gram(m1: jax.Array, m2: jax.Array, full: bool) -> jax.Array:
    """Kernel tile of two blocks' per-example gradients: ``(N1, N2)`` from ``(N, P)`` rows (:func:`gram_rows`), or
    ``(N1, N2, C', C')`` from ``(N, D, C', E)``."""
    return contract("idce,jdfe->ijcf", m1, m2) if full else gram_rows(m1, m2)


def _lazy_pair(total, a1, g1, a2, g2, full: bool, same: bool, vocab: int = 0, geo=None) -> jax.Array:
    """Add the ``lazy`` layer's contribution to ``total``: the per-example gradients of the second block formed
    once, those of the first block slice by slice (each slice after the previous one is summed, so at most one
    slice is alive besides the second block's); ``same`` (a block with itself): one product."""
    n1, n2, c = a1.shape[0], a2.shape[0], g1.shape[1]
    if total is not None:
        total, (a1, g1, a2, g2) = jax.lax.optimization_barrier((total, (a1, g1, a2, g2)))
    peg = jax.vmap(lambda a, g: _peg_dce(a, g, vocab, geo))
    if not full:
        peg = jax.vmap(lambda a, g: _peg_dce(a, g, vocab, geo).reshape(-1))
    m2 = peg(a2, g2)
    if total is None:
        total = jnp.zeros((n1, n2) + ((c, c) if full else ()), accumulation_dtype(m2))
    if same:  # one product of the block's gradients with themselves (no slices: nothing more is formed)
        return total + _gram(m2, m2, full).astype(total.dtype)
    rows = max(1, -(-n1 // _LAZY_SLICES))
    for r in range(0, n1, rows):
        total, (ar, gr, m2) = jax.lax.optimization_barrier((total, (a1[r : r + rows], g1[r : r + rows], m2)))
        m1 = peg(ar, gr)
        total = total.at[r : r + rows].add(_gram(m1, m2, full).astype(total.dtype))
    return total


def _formed(a, g, full: bool, vocab: int = 0, geo=None) -> jax.Array:
    """A block's per-example gradients of one ``lazy`` layer: ``(N, D, C', E)`` (``full``) or ``(N, C'·D·E)``;
    ``geo``: ``a`` are raw convolution inputs."""
    if full:
        return jax.vmap(lambda a, g: _peg_dce(a, g, vocab, geo))(a, g)
    return jax.vmap(lambda a, g: _peg_dce(a, g, vocab, geo).reshape(-1))(a, g)


def _formed_slice(a, g, e0, full: bool, vocab: int, geo, width: int) -> jax.Array:
    """:func:`_formed` of the output features ``e0 .. e0 + width - 1`` of a layer (``e0`` may be traced): the
    gradients of one slice of the layer's weights, whose products with another block's same slice sum to the
    layer's kernel."""
    return _formed(a, jax.lax.dynamic_slice_in_dim(g, e0, width, axis=3), full, vocab, geo)


def _panel_lazy(a_blocks: tuple, g_blocks: tuple, full: bool, vocab: int, width: int) -> tuple:
    """The tiles ``(i, j)``, ``i ≤ j``, of a resident panel's blocks for one ``lazy`` layer (not a raw convolution)
    in one program: a loop over slices of ``width`` output features, each block's gradients of the slice formed
    once and their products added to the tiles while the slice is still in cache (20–28% faster on the
    transformer's layers than forming each block's slice and multiplying the slices in programs of their own,
    whose products ran at about half the matmul peak)."""
    nb = len(a_blocks)
    pairs = [(i, j) for i in range(nb) for j in range(i, nb)]

    def products(e0, acc):
        ms = [_formed_slice(a, g, e0, full, vocab, None, width) for a, g in zip(a_blocks, g_blocks)]
        tiles = [_gram(ms[i], ms[j], full) for i, j in pairs]
        return tuple(tiles) if acc is None else tuple(t + m.astype(t.dtype) for t, m in zip(acc, tiles))

    first = products(0, None)
    n_slices = g_blocks[0].shape[3] // width
    return jax.lax.fori_loop(1, n_slices, lambda k, acc: products(k * width, acc), first)


_SLICE_WIDTH = 128  # output features per slice of a lazy layer in a panel's program (see _panel_slices)
_SLICE_WIDTH_FEW = 32  # the same for a panel of fewer than _FEW_ROWS rows
_FEW_ROWS = 128


def _panel_slices(e: int, whole: int, room: int, rows: int = _FEW_ROWS) -> int:
    """Slices of a lazy layer's ``e`` output features in a panel's program of ``rows`` examples: enough that the
    panel's gradients of one slice (``whole`` bytes for all slices) fit ``room``, and slices of at most
    :data:`_SLICE_WIDTH` features (the transformer's layers, 256 inputs × 256/768/1024 outputs and 1024 × 256, two
    blocks of 128 rows: slices of 128 features ran 0.9–1.0× the time of the best width measured, whole layers
    1.1–1.25×; 32 features 1.02–1.06×), or :data:`_SLICE_WIDTH_FEW` for fewer rows, whose products are too small to
    run at the matmul peak and gain from a slice that stays in cache (one block of 16, 32 or 64 rows: 32 features
    12–14% faster than 128)."""
    width = _SLICE_WIDTH if rows >= _FEW_ROWS else _SLICE_WIDTH_FEW
    narrow = next(k for k in range(1, e + 1) if e % k == 0 and e // k <= width)
    return max(_slices(e, whole, room), narrow)


def _slices(e: int, whole: int, room: int) -> int:
    """Slices of a layer's ``e`` output features (a divisor of ``e``) such that ``whole / slices`` bytes fit in
    ``room``: the fewest that do, else ``e``."""
    for k in range(1, e + 1):
        if e % k == 0 and whole <= k * room:
            return k
    return e


def tile(
    f1, f2, kinds: tuple, full: bool, same: bool = False, skip_lazy: bool = False, voc: tuple = (), raw: tuple = ()
) -> jax.Array:
    """Kernel tile ``(N1, N2)`` (``full``: ``(N1, N2, C', C')``) of two blocks' features; ``same``: ``f2 is f1``;
    ``skip_lazy``: without the ``lazy`` layers (the engine adds them one call at a time); ``voc``: :func:`vocabs`;
    ``raw``: :attr:`Setup.raw`."""
    (d1, fac1), (d2, fac2) = f1, f2
    total = None if d1 is None else (contract("icp,jdp->ijcd", d1, d2) if full else gram_rows(d1, d2))
    for u, k in enumerate(kinds):
        if k == GRAD or (skip_lazy and k == LAZY):
            continue
        (a1, g1), (a2, g2) = fac1[u], fac2[u]
        if total is not None:  # one layer at a time: its intermediates start after the previous layers are summed
            total, (a1, g1, a2, g2) = jax.lax.optimization_barrier((total, (a1, g1, a2, g2)))
        v = voc[u] if voc else 0
        geo = raw[u] if raw else None
        if k == POS:
            t = _pos_pair(a1, g1, a2, g2, full, v, geo)
            total = t if total is None else total + t
        else:
            total = _lazy_pair(total, a1, g1, a2, g2, full, same, v, geo)
    if total is None:
        if skip_lazy and LAZY in kinds:
            g1, g2 = fac1[kinds.index(LAZY)][1], fac2[kinds.index(LAZY)][1]
            cls = (g1.shape[1], g1.shape[1]) if full else ()
            return jnp.zeros((g1.shape[0], g2.shape[0]) + cls, accumulation_dtype(g1))
        raise ValueError("params has no differentiable leaf used by apply_fn: there is nothing to differentiate.")
    return total


# ------------------------------------------------------------------------------------------------ traceable kernels
def _classes(s: Setup, c0) -> tuple | None:
    return (c0, s.cc) if s.chunked else None


def kernel(apply_fn, params, x1, x2, *, mode: str):
    """The structured kernel (traceable): features of ``x1`` (and ``x2``) computed once per chunk of classes,
    contracted in tiles (``x2 = None``: tiles on and above the diagonal, mirrored); the chunks' kernels summed."""
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    cuts = _sym_cuts(n1, mode == "full") if x2 is None else [0, n1]
    rows = max(cuts[i + 1] - cuts[i] for i in range(len(cuts) - 1))
    s = _setup(apply_fn, params, x1, n1, n2, x2 is None, mode, rows, None, engine=False)
    kinds, full, voc, raw = s.kinds, s.full, vocabs(s.plan), s.raw
    chunk = _chunk(s.transient(), n1)

    def one(c0):
        f1 = features(s.plan, params, x1, s.summed, kinds, chunk, full, _classes(s, c0), raw)
        if x2 is not None:
            f2 = features(s.plan, params, x2, s.summed, kinds, _chunk(s.transient(), n2), full, _classes(s, c0), raw)
            return tile(f1, f2, kinds, full, voc=voc, raw=raw)
        if len(cuts) == 2:
            return tile(f1, f1, kinds, full, same=True, voc=voc, raw=raw)
        nb = len(cuts) - 1
        part = [jax.tree_util.tree_map(lambda v, i=i: v[cuts[i] : cuts[i + 1]], f1) for i in range(nb)]
        tiles = {
            (i, j): tile(part[i], part[j], kinds, full, same=i == j, voc=voc, raw=raw)
            for i in range(nb)
            for j in range(i, nb)
        }
        return jnp.concatenate(
            [jnp.concatenate([tiles[i, j] if i <= j else tiles[j, i].T for j in range(nb)], axis=1) for i in range(nb)],
            axis=0,
        )

    k = one(0)
    if s.chunked:  # the other chunks of classes, one compiled body
        n_chunks = -(-s.c_all // s.cc)
        k = jax.lax.fori_loop(1, n_chunks, lambda i, acc: acc + one(i * s.cc).astype(acc.dtype), k)
    return k / s.plan.n_classes if s.summed else k


def _use_diag(a, g, vocab: int = 0) -> jax.Array:
    """``Σ_c |Σ_t a_t ⊗ g_ct|²`` of one example, by whichever contraction needs fewer FLOPs."""
    if vocab:
        return embed_diag(a, g, vocab)
    c, t, e = g.shape
    d = a.shape[-1]
    if t == 1:
        a, g = a.reshape(-1), g.reshape(-1)
        return contract("p,p->", a, a) * contract("p,p->", g, g)
    if t * t * (d + c * e) < c * t * d * e:
        ga = contract("td,sd->ts", a, a)
        gg = contract("cte,cse->ts", g, g)
        return jnp.sum(ga * gg)
    m = _peg(a, g).reshape(-1)
    return contract("p,p->", m, m)


def diag(apply_fn, params, x, *, mode: str):
    """``K(x_i, x_i)`` per example, reduced inside each chunk (nothing per example is kept)."""
    plan = analyze(apply_fn, params, tuple(x.shape[1:]), x.dtype, embeddings=True)
    summed = mode == "pseudo"
    *_, transient = dims(plan, params, tuple(x.shape[1:]), x.dtype, summed)
    leaves = jax.tree_util.tree_leaves(params)
    voc = vocabs(plan)
    if not plan.uses and not plan.fallback:
        raise ValueError("params has no differentiable leaf used by apply_fn: there is nothing to differentiate.")

    def one(xi):
        a, g, j = example_factors(plan, leaves, xi, summed=summed)
        a, g = grouped(plan, a, g)
        return sum(_use_diag(aa, gg, v) for aa, gg, v in zip(a, g, voc)) + sum(jnp.sum(p * p) for p in j)

    total = jax.lax.map(one, x, batch_size=_chunk(transient, x.shape[0]))
    return total / plan.n_classes if summed else total


def estimate(apply_fn, params, x1, x2, mode: str) -> tuple[int, int]:
    """``(bytes per point held at once, fixed bytes)`` of :func:`kernel` as planned (features of one chunk of
    classes kept for every point; one chunk of the factor computation and the largest tile intermediate; the
    output)."""
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    cuts = _sym_cuts(n1, mode == "full") if x2 is None else [0, n1]
    rows = max(cuts[i + 1] - cuts[i] for i in range(len(cuts) - 1))
    s = _setup(apply_fn, params, x1, n1, n2, x2 is None, mode, rows, None, engine=False)
    per = s.per_point()
    out = n1 * n2 * (s.c_all * s.c_all if s.full else 1) * s.item
    chunk = _chunk(s.transient(), n1)
    return per, out + chunk * s.transient() + _tile_bytes(s.uses, s.kinds, s.cc, s.item, 2 * rows, geo=s.raw)


# ------------------------------------------------------------------------------------------------ eager engine
_JITS: collections.OrderedDict = collections.OrderedDict()
# resident bytes that compiling the programs of a _JITS key added (they stay resident): charged to every later
# call's budget too, so that a second call plans the same panel as the first
_COMPILED: dict = {}
_HEAP_NOISE = 16 * 2**20  # resident-memory changes below this are not counted as compiled code (no drift over calls)
# per model (function, parameter structure, input shape and dtype, mode, policy): the compiled code a plan of it left
# resident, which later plans of that model leave room for (a plan that no longer fits once compiled is made again)
_RESERVED: collections.OrderedDict = collections.OrderedDict()


def _too_small(compiled: int, budget: int) -> str:
    from .._memory import format_bytes

    return (
        f"the memory budget {format_bytes(budget)} is smaller than this model's compiled kernel programs alone (about "
        f"{format_bytes(compiled)}, measured when they were compiled): raise it to a few times that (memory_budget=, "
        "JAXCOMPARE_MEMORY_BUDGET)."
    )


def _params_key(params) -> tuple:
    """The structure, leaf shapes and leaf dtypes of ``params`` (part of the compiled programs' cache keys)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef, tuple((tuple(jnp.shape(l)), str(jnp.result_type(l))) for l in leaves)


def blocked(
    apply_fn,
    params,
    x1,
    x2,
    *,
    mode: str,
    block_size: int,
    budget=None,
    show: bool = False,
    precision=None,
    _replan: bool = True,
):
    """Eager blocked kernel (see module docstring): ``(kernel (N1, N2[, C', C']), diagonal of x1 or None)``.

    Each block's features are computed once when all blocks fit the memory budget; otherwise as many as fit stay
    resident (a panel) and the other blocks are streamed past it (recomputed once per panel). Trace kernels may
    run once per chunk of classes (:mod:`._planner`), the chunks' tiles summed. Inputs smaller than one block are
    not padded; a partial last block is padded by repeating its first row (one compiled shape). On CPU the
    programs are compiled before the panel is planned and what compiling left resident is charged to the budget;
    when the plan then no longer keeps two blocks resident, the call is planned again with that much less (once).
    """
    from ..._precision import resolve_precision, traced_with_policy
    from ..._progress import progress
    from .._memory import format_bytes, memory_budget, release_memory, resident_bytes

    cpu = jax.default_backend() == "cpu"
    if cpu:
        release_memory()
    rss0 = resident_bytes() if cpu else None
    n1 = x1.shape[0]
    sym = x2 is None
    n2 = n1 if sym else x2.shape[0]
    bs = int(min(block_size, max(n1, n2)))
    budget_b = memory_budget(budget)
    policy = resolve_precision(precision)
    # the parameters' structure, shapes and dtypes: one model function evaluated at another width is another program
    pkey = _params_key(params)
    mkey = (apply_fn, pkey, tuple(x1.shape[1:]), str(x1.dtype), mode, policy)
    try:
        reserve = _RESERVED.get(mkey, 0)
    except TypeError:  # an unhashable model: no memo
        mkey, reserve = None, 0
    if reserve >= budget_b:  # measured by an earlier call: this model's compiled programs alone exceed the budget
        raise ValueError(_too_small(reserve, budget_b))
    s = _setup(apply_fn, params, x1, n1, n2, sym, mode, bs, budget_b - reserve, engine=True)
    bs, s = _merged(apply_fn, params, x1, n1, n2, sym, mode, bs, budget_b - reserve, s)
    plan, summed, full, kinds, c, item, raw = s.plan, s.summed, s.full, s.kinds, s.cc, s.item, s.raw
    voc = vocabs(plan)
    # per layer, the key of its programs: an embedding's vocabulary or a convolution's raw-input geometry
    lkey = tuple((v, g) for v, g in zip(voc, raw))
    chunk = _chunk(s.transient(), bs, budget_b)
    key = (apply_fn, pkey, tuple(x1.shape[1:]), str(x1.dtype), mode, kinds, chunk)
    key = key + (c, policy)
    try:
        fns = _JITS.get(key)
    except TypeError:
        key, fns = None, None
    if fns is None:

        def with_policy(fn, static=(), options=None):
            def run(*args):
                with traced_with_policy(policy):
                    return fn(*args)

            return jax.jit(run, static_argnums=static, compiler_options=options)

        # the per-example-gradient part, each Gram-of-positions layer and each lazy layer in calls of their own:
        # XLA:CPU runs the dense product ~10x slower when a Gram of positions shares its program (measured on a
        # ResNet, jaxlib 0.10.2; optimization barriers do not help)
        dense_kinds = tuple(LAZY if k == POS else k for k in kinds)
        classes_of = lambda c0: _classes(s, c0)  # noqa: E731
        fns = (
            # the features, and the features without the layers' inputs (later chunks of classes)
            *[
                with_policy(
                    lambda p, xb, c0, ch, a=a: features(plan, p, xb, summed, kinds, ch, full, classes_of(c0), raw, a),
                    (3,),
                    _factor_options(plan),
                )
                for a in (True, False)
            ],
            with_policy(lambda f1, f2: tile(f1, f2, dense_kinds, full, skip_lazy=True, voc=voc)),
            with_policy(lambda f: tile(f, f, dense_kinds, full, same=True, skip_lazy=True, voc=voc)),
            with_policy(lambda m1, m2: _gram(m1, m2, full)),
            *[
                (
                    with_policy(lambda a, g, v=v, geo=geo: _formed(a, g, full, v, geo)),
                    with_policy(lambda a1, g1, a2, g2, v=v, geo=geo: _pos_pair(a1, g1, a2, g2, full, v, geo)),
                    with_policy(lambda a, g, e0, w, v=v, geo=geo: _formed_slice(a, g, e0, full, v, geo, w), (3,)),
                    with_policy(lambda a, g, w, v=v: _panel_lazy(a, g, full, v, w), (2,)),
                )
                for v, geo in _layer_keys(lkey)
            ],
        )
        if key is not None:
            _JITS[key] = fns
            while len(_JITS) > 16:
                _COMPILED.pop(_JITS.popitem(last=False)[0], None)
    feat_fn, grads_fn, dense_fn, dense_self_fn, gram_fn, *lazy_fns = fns
    if cpu:  # one program at a time (see _synced)
        feat_fn, grads_fn, dense_fn, dense_self_fn, gram_fn = map(
            _synced, (feat_fn, grads_fn, dense_fn, dense_self_fn, gram_fn)
        )
        lazy_fns = [tuple(map(_synced, t)) for t in lazy_fns]
    lazy_of = dict(zip(_layer_keys(lkey), lazy_fns))
    lazy = [u for u, k in enumerate(kinds) if k == LAZY]

    pos = [u for u, k in enumerate(kinds) if k == POS]

    def core_fn(f1, f2, same: bool):  # the dense part and the Gram-of-positions layers, one call each
        t = dense_self_fn(f1) if same else dense_fn(f1, f2)
        for u in pos:
            t = t + lazy_of[lkey[u]][1](*f1[1][u], *f2[1][u])
        return t

    def column(rows: dict, fk, k: int) -> None:
        """The tiles ``(i, k)`` of the blocks ``i`` of ``rows`` (of ``x1``) with block ``k`` (of ``x2``, features
        ``fk``; ``x2 = None`` and ``k`` among the rows: its self tile). Each lazy layer's gradients of block ``k``
        are formed once for the column and those of each row block once, so at most two blocks' gradients of one
        layer are alive (whole products, no row slices: a 32-row slice's product ran at half the speed of the
        128-row one)."""
        t = {i: core_fn(f, fk, sym and i == k) for i, f in rows.items()}
        for u in lazy:
            form = lazy_of[lkey[u]][0]
            mk = form(*fk[1][u])
            for i, f in rows.items():
                mi = mk if sym and i == k else form(*f[1][u])
                t[i] = t[i] + gram_fn(mi, mk)
                del mi
            del mk
        for i in rows:
            put(i, k, t[i])

    def blocks(x):
        n = x.shape[0]
        nb = -(-n // bs)
        if nb * bs != n:
            x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (nb * bs - n,) + x.shape[1:])], axis=0)
        return [x[i * bs : (i + 1) * bs] for i in range(nb)]

    b1 = blocks(x1)
    b2 = b1 if sym else blocks(x2)
    per_block = bs * s.per_point()
    cls = s.c_all * s.c_all if full else 1
    out_bytes = n1 * n2 * cls * item
    n_blocks = len(b1) if sym else len(b1) + len(b2)
    work = chunk * s.transient() + bs * bs * item * cls
    # transient of one tile: two blocks' whole lazy gradients, or the panel's narrow slices when only those let every
    # block stay resident (the engine then slices each lazy layer as narrowly as the room needs)
    tile_room = tile_room_bytes(s.uses, kinds, c, item, bs, len(b1), sym, raw, budget_b - out_bytes - work, per_block)
    work += tile_room
    compiled = 0
    if s.choice.fits and rss0 is not None:
        # compile first, then measure: on CPU what compiling adds stays resident, and the panel is planned from
        # what is left of the budget (the first call of a model compiles; later calls reuse the programs, and are
        # charged what their compiling added: measured, a second call of ResNet-18 ¼ at N = 1024 under a 1.5 GiB
        # budget otherwise kept one block more and peaked 0.25 GiB higher than the first)
        _compile(fns, lazy, pos, lkey, params, b1[0], sym, len(b1) > 1, chunk)
        release_memory()
        rss = resident_bytes()
        added = max(0, (rss or rss0) - rss0)
        added = added if added >= _HEAP_NOISE else 0  # smaller changes are the heap's, not compiled code
        compiled = added + (_COMPILED.get(key, 0) if key is not None else 0)
        if key is not None:
            _COMPILED[key] = compiled
        work += compiled
    cap = _capacity(budget_b - out_bytes - work, per_block)
    # compiled > reserve: this call measured its compiled code (CPU, a plan that fits) and it took more than planned
    if _replan and mkey is not None and compiled > reserve:
        if cap < min(2, n_blocks):  # the plan no longer fits beside its compiled code: plan again with less
            _RESERVED[mkey] = compiled
            if compiled >= budget_b:
                raise ValueError(
                    _too_small(compiled, budget_b)
                )  # (only then: a plan that fits is planned the same way by the next call)
            while len(_RESERVED) > 64:
                _RESERVED.popitem(last=False)
            return blocked(
                apply_fn,
                params,
                x1,
                x2,
                mode=mode,
                block_size=block_size,
                budget=budget,
                show=show,
                precision=precision,
                _replan=False,
            )
    whole = _tile_bytes(s.uses, kinds, c, item, 2 * bs, True, raw)
    if cap < len(b1) and tile_room < whole:  # compiling took the room of the narrow slices: blocks are streamed
        work += whole - tile_room  # past a panel, two blocks' whole gradients at a time (column)
        tile_room = whole
        cap = _capacity(budget_b - out_bytes - work, per_block)
    if not s.choice.fits:
        need = 2 * per_block + work + out_bytes
        head = (
            f"the kernel's blocks of {bs} points need about {format_bytes(need)} at once (features "
            f"{format_bytes(per_block)} per block, working memory {format_bytes(work)}, the output "
            f"{format_bytes(out_bytes)}), more than the memory budget {format_bytes(budget_b)}"
        )
        fit = int(bs * (budget_b - out_bytes - work) // max(2 * per_block, 1))
        if out_bytes >= budget_b // 2:  # no block size fits beside the output: the output must go to disk
            raise ValueError(
                f"{head}; the output itself takes {format_bytes(out_bytes)}: write the kernel to disk tile by tile "
                "(kernel_to_disk), raise the budget (memory_budget=, JAXCOMPARE_MEMORY_BUDGET), or use a projection."
            )
        if fit < 1:
            raise ValueError(
                f"{head}; not even one point per block fits: raise the budget (memory_budget=, "
                "JAXCOMPARE_MEMORY_BUDGET) or use a projection."
            )
        raise ValueError(f"{head}; use block_size <= {fit}, a larger memory budget, or a projection.")
    cap = max(cap, min(2, n_blocks))
    # what the panel leaves of the budget widens the chunks of the factor computation (compiled on first use)
    wide = wider_chunk(chunk, s.transient(), budget_b - out_bytes - work - per_block * min(cap, n_blocks), bs)
    work += (wide - chunk) * s.transient()
    shape = (len(b1) * bs, len(b2) * bs) + ((c, c) if full else ())
    out = None  # allocated with the first tile's dtype (contractions accumulate in at least float32)
    n_chunks = -(-s.c_all // c) if s.chunked else 1
    n_tiles = n_chunks * (len(b1) * (len(b1) + 1) // 2 if sym else len(b1) * len(b2))
    bar = iter(progress(range(n_tiles), total=n_tiles, desc=f"{mode} kernel tiles", enabled=show))

    def put(i, j, t, count=True):
        nonlocal out
        if count:
            next(bar, None)
        t = np.asarray(t)
        if out is None:
            out = np.zeros(shape, dtype=t.dtype)
        out[i * bs : (i + 1) * bs, j * bs : (j + 1) * bs] += t
        if sym and i != j:
            t = np.swapaxes(t, 0, 1)
            out[j * bs : (j + 1) * bs, i * bs : (i + 1) * bs] += np.swapaxes(t, 2, 3) if full else t

    # one panel for every chunk of classes: the layers' inputs of the first chunk are kept for the others (they do
    # not depend on the class; the transformer at N = 256 computes its factors ~8% faster without them)
    keep_inputs = sym and n_chunks > 1 and len(b1) <= cap
    inputs = {}
    for ck in range(n_chunks):
        c0 = jnp.asarray(ck * c, jnp.int32)
        feat = lambda xb, c0=c0: feat_fn(params, xb, c0, wide)  # noqa: E731
        if sym:
            for rows in panels(len(b1), len(b2), sym, cap):
                panel = {}
                for i in rows:
                    if i in inputs:
                        dense_i, g_i = grads_fn(params, b1[i], c0, wide)
                        panel[i] = (dense_i, tuple(None if f is None else (a, f[1]) for a, f in zip(inputs[i], g_i)))
                        del dense_i, g_i
                    else:
                        panel[i] = feat(b1[i])
                    if keep_inputs:
                        inputs[i] = tuple(None if f is None else f[0] for f in panel[i][1])
                    if cpu:
                        release_memory()
                free = budget_b - out_bytes - work - per_block * min(cap, len(b1))
                if lazy:
                    # the panel's lazy layers one at a time, each in slices of its output features small enough
                    # that all the panel's blocks' gradients of one slice fit the memory set aside for two blocks'
                    # whole gradients (and what is free): each block's gradients formed once, not once per tile.
                    # A panel of one block too: its slices' products in cache ran the transformer at N = 16 1.2x
                    # faster than a whole product per layer.
                    pairs = [(i, j) for i in panel for j in panel if j >= i]
                    for i, j in pairs:
                        put(i, j, core_fn(panel[i], panel[j], i == j))
                    for u in lazy:
                        _, d_u, e_u = s.uses[u]
                        patches = 0 if raw[u] is None else bs * raw[u].t_out * raw[u].d * item
                        whole = len(panel) * bs * c * d_u * e_u * item
                        room = max(1, tile_room + max(0, free) - patches)
                        if raw[u] is None:  # one program for the panel: each slice formed, then its products
                            # counted twice: the program's formed slices and its copies of them (peak RSS)
                            ns = _panel_slices(e_u, 2 * whole, room, len(panel) * bs)
                            fac = [panel[i][1][u] for i in panel]
                            tiles = lazy_of[lkey[u]][3](tuple(f[0] for f in fac), tuple(f[1] for f in fac), e_u // ns)
                            del fac
                            for (i, j), t in zip(pairs, tiles):
                                put(i, j, t, count=False)
                            del tiles  # the heap reuses what it held for the next layer's program (handed back below)
                            continue
                        ns = _slices(e_u, whole, room)
                        form = lazy_of[lkey[u]][2]
                        for e0 in range(0, e_u, e_u // ns):
                            e0 = jnp.asarray(e0, jnp.int32)
                            ms = {i: form(*panel[i][1][u], e0, e_u // ns) for i in panel}
                            for i, j in pairs:
                                put(i, j, gram_fn(ms[i], ms[j]), count=False)
                            del ms
                            if cpu:  # freed slices handed back: the heap otherwise keeps them resident
                                release_memory()
                    if cpu:
                        release_memory()
                else:
                    for j in panel:
                        column({i: f for i, f in panel.items() if i <= j}, panel[j], j)
                for k in range(rows.stop, len(b1)):
                    fk = feat(b1[k])
                    column(panel, fk, k)
                    del fk
                del panel
        else:
            keep2 = len(b1) + len(b2) <= cap
            cache2 = {}
            for rows in panels(len(b1), len(b2), sym, cap):
                panel = {i: feat(b1[i]) for i in rows}
                for j in range(len(b2)):
                    fj = cache2.get(j)
                    if fj is None:
                        fj = feat(b2[j])
                        if keep2:
                            cache2[j] = fj
                    column(panel, fj, j)
                    del fj
                del panel
            del cache2
    inputs.clear()
    if cpu:
        release_memory()
    k = out[:n1, :n2]
    if summed:
        k = k / plan.n_classes
    d = np.diagonal(k).copy() if sym and not full else None
    return jnp.asarray(k), (None if d is None else jnp.asarray(d))


_YNN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
_YNN_OK: list = []  # whether this jaxlib takes _YNN_DOTS (probed once)


def _factor_options(plan: Plan) -> dict | None:
    """XLA compiler options of the factor programs: on CPU, for a model without convolutions, YNNPACK fusions of
    products only. Its fused elementwise and reduction kernels ran a product-and-sum over the unit batch axis of
    one example ~10× slower (LayerNorms, softmaxes, scale gradients); the factor programs of the transformer and
    the ViT ran 14% and 19% faster without them, a ResNet's 20% slower (its default kept). None elsewhere, or
    where this jaxlib does not know the option (probed once with a small program)."""
    if jax.default_backend() != "cpu" or any(e.prim.name == "conv_general_dilated" for e in plan.prog.eqns):
        return None
    if not _YNN_OK:
        try:
            jax.jit(lambda v: v + 1, compiler_options=_YNN_DOTS).lower(jnp.zeros(2)).compile()
            _YNN_OK.append(True)
        except Exception:  # noqa: BLE001 - an unknown option or value: the default compilation
            _YNN_OK.append(False)
    return dict(_YNN_DOTS) if _YNN_OK[0] else None


def _synced(fn):
    """``fn`` waiting for its result: on CPU each of the engine's programs uses every core, and one dispatched
    while another still runs competes with it (the transformer at N = 256: 82 s with the programs dispatched
    asynchronously, 67 s one at a time)."""

    def call(*args):
        return jax.block_until_ready(fn(*args))

    return call


def _merged(apply_fn, params, x1, n1: int, n2: int, sym: bool, mode: str, bs: int, budget: int, s):
    """``(rows per block, plan)``: blocks smaller than :data:`ENGINE_BLOCK` rows merged into blocks of about that
    many when every merged block's features stay resident within the budget, so that the memory is still bounded
    by the budget and the tiles are contracted at the speed of larger products (a 64-row tile's products run at
    about half the speed of a 128-row one's on CPU); else (or when more than 1/8 of the merged blocks' rows would
    be padding, e.g. a short ``x2``) the blocks asked for."""
    n = max(n1, n2)
    if bs >= ENGINE_BLOCK or n < 2 * ENGINE_BLOCK or not s.choice.fits:
        return bs, s
    rows = -(-n // -(-n // ENGINE_BLOCK))
    sizes = (n1,) if sym else (n1, n2)
    if rows <= bs or sum(-(-m // rows) * rows for m in sizes) > 1.125 * sum(sizes):  # the other input mostly padding
        return bs, s
    s2 = _setup(apply_fn, params, x1, n1, n2, sym, mode, rows, budget, engine=True)
    blocks = -(-n1 // rows) + (0 if sym else -(-n2 // rows))
    if s2.choice.fits and s2.choice.resident >= blocks:
        return rows, s2
    return bs, s


def _layer_keys(lkey: tuple) -> list:
    """The distinct program keys of the layers (``(vocabulary, raw geometry)``), in a fixed order."""
    out = []
    for k in lkey:
        if k not in out:
            out.append(k)
    return out


def _compile(fns, lazy: list, pos: list, lkey: tuple, params, x0, sym: bool, pairs: bool, chunk: int) -> None:
    """Compile the programs the engine will call (features in chunks of ``chunk`` examples, tiles, the lazy layers'
    gradients and products) for blocks shaped like ``x0``, without running them: ``jax.jit`` keeps what it
    compiled for the calls."""
    feat_fn, _, dense_fn, dense_self_fn, gram_fn, *lazy_fns = fns
    lazy_of = dict(zip(_layer_keys(lkey), lazy_fns))
    c0 = jax.ShapeDtypeStruct((), jnp.int32)
    feat_fn.lower(params, x0, c0, chunk).compile()
    f = feat_fn.eval_shape(params, x0, c0, chunk)
    if sym:
        dense_self_fn.lower(f).compile()
    if pairs or not sym:
        dense_fn.lower(f, f).compile()
    for u in lazy:
        form = lazy_of[lkey[u]][0]
        form.lower(*f[1][u]).compile()
        m = jax.eval_shape(form, *f[1][u])
        gram_fn.lower(m, m).compile()
    for u in pos:
        a, g = f[1][u]
        lazy_of[lkey[u]][1].lower(a, g, a, g).compile()


_MODES = {"entk": "full", "trntk": "trace", "trntk0": "trace", "pntk": "pseudo", "pntk0": "pseudo"}


ENGINE_BLOCK = 128  # block size of eager default calls on the engine (tiles of this many rows, all resident)


def engine_block(n1: int, x2: Any, per: int, fixed: int, budget: int, mode: str) -> int:
    """Block size of an eager default call on the engine: about :data:`ENGINE_BLOCK` rows, balanced so that a
    partial last block wastes little (one block, unpadded, up to that size); smaller when two blocks of features
    would not fit the budget (the engine then keeps as many blocks as fit and streams the others)."""
    import warnings

    from .._memory import format_bytes

    n = max(n1, 0 if x2 is None else x2.shape[0])
    target = ENGINE_BLOCK
    need = per * (n1 + (0 if x2 is None else x2.shape[0])) + fixed
    if need > budget:
        target = max(1, min(target, int((budget - fixed) // max(2 * per, 1)) if budget > fixed else 1))
        warnings.warn(
            f"the {mode} kernel needs an estimated {format_bytes(need)} at once, more than the memory budget "
            f"{format_bytes(budget)}: computing it block by block, the features of as many blocks as fit kept and "
            "the others recomputed (the blocks follow the budget; set JAXCOMPARE_MEMORY_BUDGET or call "
            "batched(kernel_fn, block_size, memory_budget=...) to choose).",
            RuntimeWarning,
            stacklevel=5,
        )
    nb = -(-n // target)
    return -(-n // nb)


def engine_mode(spec: Any, params: Any, fn: Any, x1: Any, x2: Any, n_outputs: int) -> str | None:
    """The mode (``"full"``/``"trace"``/``"pseudo"``) when an eager :func:`jaxcompare.batched` call of a kernel
    record runs on :func:`blocked`: an exact gradient kernel of this package (no projection, no other transform)
    whose implementation is (or resolves to) ``"structured"`` for the canonical model ``fn`` (one input array,
    ``(N, n_outputs)`` logits); else None."""
    if spec is None or spec.name not in _MODES or spec.transforms or spec.apply_fn is None:
        return None
    opts = dict(spec.options)
    if opts.get("projection") is not None:
        return None
    impl = opts.get("implementation", "auto")
    if impl == "auto":
        from .._implementations import choose_auto

        impl = choose_auto(fn, params, x1, x2, int(n_outputs))
    return _MODES[spec.name] if impl == "structured" else None
