"""Planner of the structured kernels: per layer layout, and (trace kernels) how many classes' factors are computed
at once, chosen by a FLOP model under the memory budget.

The trace kernel is ``Σ_c K_c`` and the sensitivities of one class are ``C`` times smaller than those of all of
them, while the layer inputs are shared by every class. Computing the factors a *chunk* of ``C'`` classes at a time
(one forward pass and ``C'`` backward passes per chunk, the tiles of each chunk summed) divides the stored
sensitivities and per-example gradients by ``C / C'`` at the price of ``C / C' - 1`` extra forward passes — no extra
backward passes (the ``N·C`` backward passes are the floor). The full kernel needs the class pairs together and the
pseudo kernel has one summed class: they are never chunked.

Cost model (FLOPs; the backward/forward passes weighted by :data:`PASS_WEIGHT`, their measured inefficiency next to
a matrix product): per chunk, the examples whose factors are computed (once each when all blocks' features stay
resident, more when panels are streamed) times ``F (1 + 2 C')`` (``F`` the forward FLOPs of one example, from the
program's dot_generals and convolutions) plus forming the ``grad`` layers' gradients; the ``lazy`` layers'
gradients formed again (once per block when the whole panel is resident, else per tile); the Gram products of the
pairs computed (a symmetric kernel's diagonal tiles in full). Among the plans that fit the budget the cheapest is
taken (ties: fewer chunks); when none fits, the one needing the least memory, flagged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._patches import ga_flops
from ._program import Lit

__all__: list[str] = []

PASS_WEIGHT = 1.5  # a FLOP of the factor passes costs about this many Gram-product FLOPs on CPU (measured, ResNet)
GRAD, POS, LAZY = "grad", "pos", "lazy"


@dataclasses.dataclass(frozen=True)
class Choice:
    """A plan: ``classes`` per chunk (``C'``; the number of classes when not chunked), the layouts, the modelled
    FLOPs and peak bytes, whether it fits the budget, and the blocks of features kept resident (engine)."""

    classes: int
    kinds: tuple
    flops: float
    bytes: int
    fits: bool
    resident: int = 0


def class_chunks(c: int) -> list:
    """Chunk sizes giving distinct numbers of chunks, largest first: ``ceil(C / k)`` for ``k = 1 .. C``."""
    return sorted({-(-c // k) for k in range(1, c + 1)}, reverse=True)


def forward_flops(plan: Any, params: Any, x_shape: tuple) -> float:
    """FLOPs of one forward pass of one example: its dot_generals and convolutions (elementwise work ignored)."""
    prog = plan.prog
    leaves = jax.tree_util.tree_leaves(params)
    shp = {i: tuple(jnp.shape(l)) for i, l in zip(prog.in_ids, leaves)}
    shp[prog.in_ids[-1]] = (1,) + tuple(x_shape)
    for i, c in prog.consts.items():
        shp[i] = tuple(np.shape(c))

    def shape(r):
        return tuple(np.shape(r.val)) if isinstance(r, Lit) else shp.get(r, ())

    total = 0.0
    for e in prog.eqns:
        for o, s in zip(e.outs, e.shapes):
            shp[o] = tuple(s[0])
        out = float(np.prod(e.shapes[0][0], dtype=np.float64)) if e.shapes else 0.0
        if e.prim.name == "dot_general":
            (lc, _), _ = e.params["dimension_numbers"]
            ls = shape(e.ins[0])
            total += 2.0 * out * float(np.prod([ls[d] for d in lc], dtype=np.float64))
        elif e.prim.name == "conv_general_dilated":
            rs = e.params["dimension_numbers"].rhs_spec
            fs = shape(e.ins[1])
            if fs:
                total += 2.0 * out * float(np.prod(fs, dtype=np.float64)) / max(fs[rs[0]], 1)
    return total


def _form(uses, embed, kinds, c: int, kind: str) -> float:
    """FLOPs of forming one example's gradients of the layers in layout ``kind``."""
    return sum(2.0 * c * t * (e if v else d * e) for (t, d, e), v, k in zip(uses, embed, kinds) if k == kind)


def ga_pair(t: int, d: int, embed: bool, geo) -> float:
    """FLOPs per pair of examples of the Gram of a layer's input positions: ``2 T² D`` (token ids: ``2 T²``; raw
    convolution inputs: :func:`._patches.ga_flops`)."""
    if embed:
        return 2.0 * t * t
    return ga_flops(geo) if geo is not None else 2.0 * t * t * d


def gram_flops(uses, embed, fb, kinds, c: int, geo: tuple = ()) -> float:
    """FLOPs of one pair of examples' kernel entry (``geo``: raw convolution inputs, :func:`._layouts.raw_geos`)."""
    total = 2.0 * c * sum(fb)
    geo = geo or (None,) * len(uses)
    for (t, d, e), v, k, g in zip(uses, embed, kinds, geo):
        total += ga_pair(t, d, v, g) + 2.0 * t * t * c * e if k == POS else 2.0 * c * d * e
    return total


def feature_passes(nb1: int, nb2: int, sym: bool, cap: int) -> int:
    """Blocks whose features the engine computes (the panel loops of :func:`._blocks.blocked`): once each when all
    fit, else each panel's blocks plus the blocks streamed past it."""
    if sym:
        n, p = 0, 0
        while p < nb1:
            m = nb1 - p if nb1 - p <= cap else cap - 1
            n += nb1 - p
            p += m
        return n
    keep2 = nb1 + nb2 <= cap
    n, p = (nb2 if keep2 else 0), 0
    while p < nb1:
        m = min(nb1 - p, cap - (nb2 if keep2 else 1))
        n += m + (0 if keep2 else nb2)
        p += m
    return n


def panels(nb1: int, nb2: int, sym: bool, cap: int) -> list:
    """The engine's panels (:func:`._blocks.blocked`): ranges of row blocks kept resident together when ``cap``
    blocks fit. Symmetric: all remaining blocks when they fit, else one fewer than fit (room for a block streamed
    past them); otherwise room is left for the column blocks (all of them when every block fits, else one)."""
    out, p = [], 0
    keep2 = nb1 + nb2 <= cap
    while p < nb1:
        if sym:
            m = nb1 - p if nb1 - p <= cap else cap - 1
        else:
            m = min(nb1 - p, cap - (nb2 if keep2 else 1))
        out.append(range(p, p + m))
        p += m
    return out


def lazy_forms(nb1: int, nb2: int, sym: bool, cap: int) -> int:
    """Blocks whose lazy gradients the engine forms per layer and chunk (the panel loops of
    :func:`._blocks.blocked`): a symmetric panel forms each of its blocks once (in slices of output features), and a
    block streamed past a panel takes a column of tiles, its gradients formed once and each panel block's once;
    without symmetry every column of a panel forms its block and each panel block's."""
    if sym:
        return sum(len(r) + (nb1 - r.stop) * (1 + len(r)) for r in panels(nb1, nb2, sym, cap))
    return sum(nb2 * (1 + len(r)) for r in panels(nb1, nb2, sym, cap))


def plan_cost(
    uses, embed, fb, kinds, c: int, c_all: int, fwd: float, featurized: float, formed: float, pairs: float, geo=()
) -> float:
    """Modelled cost (see module docstring) of ``ceil(c_all / c)`` chunks, each featurizing ``featurized`` examples,
    re-forming ``formed`` examples' lazy gradients and contracting ``pairs`` pairs."""
    per_chunk = (
        featurized * (PASS_WEIGHT * fwd * (1 + 2 * c) + _form(uses, embed, kinds, c, GRAD))
        + formed * _form(uses, embed, kinds, c, LAZY)
        + pairs * gram_flops(uses, embed, fb, kinds, c, geo)
    )
    return -(-c_all // c) * per_chunk


def best(options: list) -> Choice:
    """The cheapest plan that fits (ties: fewer chunks, then less memory), else the one needing the least memory."""
    ok = [o for o in options if o.fits]
    if ok:
        return min(ok, key=lambda o: (o.flops, -o.classes, o.bytes))
    return min(options, key=lambda o: (o.bytes, o.flops))
