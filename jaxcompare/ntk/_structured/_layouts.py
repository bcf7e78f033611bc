"""Layouts and plans of the structured kernels (:mod:`._blocks`): the dimensions of each layer's factors, the layout
kept per example (``grad``/``pos``/``lazy``), their memory, and the planner's choice of the layouts and of the chunk
of classes under the memory budget (:mod:`._planner`)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..._validation import is_concrete
from .._memo import memoized
from . import _planner as PL
from ._analysis import Plan, analyze
from ._factors import example_factors

__all__ = ["choose_kinds", "dims", "feature_floats", "Setup"]

GRAD, POS, LAZY = "grad", "pos", "lazy"
_SYM_TILE = 128  # x2 = None: tiles of at least this many rows, mirrored below the diagonal
_SYM_MAX_BLOCKS = 4
_POS_ELEMENTS = 2**22  # largest (rows × cols × T × T) intermediate of one Gram-of-positions product
_CHUNK_BYTES = 192 * 1024**2  # transient memory target of one chunk of the factor computation


# ------------------------------------------------------------------------------------------------ shapes and layouts
def groups(plan: Plan) -> tuple:
    """The structured uses as *layers*: dense uses reading the same input (the same activation, layout and fused
    bias column: e.g. the query, key and value projections) form one layer whose output features are theirs side
    by side — the inner product of the concatenated gradients is the sum of theirs, so the layer is exact and its
    inputs are kept once. Other uses are layers of their own. Tuples of use indices, in order of first use."""
    keyed: dict = {}
    for u, use in enumerate(plan.uses):
        if use.kind == "dot":
            key = (plan.prog.eqns[use.eqn].ins[use.act], use.act_perm, use.n_pos, use.bias is not None)
        else:
            key = ("own", u)
        keyed.setdefault(key, []).append(u)
    return tuple(tuple(v) for v in keyed.values())


def grouped(plan: Plan, a: list, g: list) -> tuple[list, list]:
    """The factors of one example per layer (:func:`groups`): the shared inputs once, the sensitivities of the
    layer's uses concatenated along their features."""
    gs = groups(plan)
    g_out = [g[grp[0]] if len(grp) == 1 else jnp.concatenate([g[u] for u in grp], axis=-1) for grp in gs]
    return [a[grp[0]] for grp in gs], g_out


def dims(plan: Plan, params: Any, x_shape: tuple, x_dtype: Any, summed: bool, classes: int | None = None) -> tuple:
    """``((T, D, E) per layer (:func:`groups`), (P_l per fallback leaf), C', itemsize, transient bytes per
    example)``; ``D`` of an embedding is its number of rows; ``classes``: ``C'`` of one chunk of classes."""
    leaves = jax.tree_util.tree_leaves(params)
    c = 1 if summed else (plan.n_classes if classes is None else classes)

    def shapes(lv, xi):
        a, g, j = example_factors(plan, lv, xi, summed=summed, classes=None if summed else (0, c))
        return (*grouped(plan, a, g), j)

    a, g, j = jax.eval_shape(shapes, leaves, jax.ShapeDtypeStruct(x_shape, x_dtype))
    emb = embeds(plan)
    uses = tuple(
        (int(aa.shape[0]), v if v else int(aa.shape[1]), int(gg.shape[2])) for v, aa, gg in zip(vocabs(plan), a, g)
    )
    fb = tuple(int(jj.shape[1]) for jj in j)
    item = max(4, jnp.dtype((g + j)[0].dtype).itemsize) if (g or j) else 4
    act = sum(int(np.prod(s[0], dtype=np.int64)) for e in plan.prog.eqns for s in e.shapes)
    fac = sum(t * (1 if v else d) + c * t * e for (t, d, e), v in zip(uses, emb)) + c * sum(fb)
    return uses, fb, c, item, item * ((2 + c) * act + fac)


def embeds(plan: Plan) -> tuple:
    """Per layer (:func:`groups`): whether it is an embedding lookup (token ids as inputs)."""
    return tuple(plan.uses[grp[0]].kind == "embed" for grp in groups(plan))


def vocabs(plan: Plan) -> tuple:
    """Per layer (:func:`groups`): the table's number of rows for an embedding lookup, else 0."""
    return tuple(plan.uses[grp[0]].vocab if plan.uses[grp[0]].kind == "embed" else 0 for grp in groups(plan))


def layer_geos(plan: Plan, uses: tuple) -> tuple:
    """Per layer (:func:`groups`): the :class:`._patches.ConvGeo` of a convolution whose raw inputs ``(T_in,
    C_in)`` are fewer floats than its patches ``(T, D)`` (kept raw in the ``pos``/``lazy`` layouts), else None."""
    out = []
    for grp, (t, d, _) in zip(groups(plan), uses):
        geo = plan.uses[grp[0]].geo if len(grp) == 1 else None
        ok = geo is not None and geo.t_out == t and geo.d == d and geo.t_in * geo.c_in < t * d
        out.append(geo if ok else None)
    return tuple(out)


def raw_geos(geo: tuple, kinds: tuple) -> tuple:
    """``geo`` where the layer's inputs are kept raw (layouts ``pos`` and ``lazy``), None elsewhere."""
    return (
        tuple(g if g is not None and k != GRAD else None for g, k in zip(geo, kinds)) if geo else (None,) * len(kinds)
    )


def a_floats(t: int, d: int, embed: bool, geo) -> int:
    """Floats of one example's stored layer inputs: token ids, raw inputs (``geo``) or ``(T, D)``."""
    return t if embed else (geo.t_in * geo.c_in if geo is not None else t * d)


def choose_kinds(
    uses: tuple,
    c: int,
    full: bool,
    tile_rows: int,
    allow_lazy: bool,
    embed: tuple = (),
    geo: tuple = (),
    long_lazy: bool = False,
) -> tuple:
    """The layout of each structured use (see module docstring); ``embed[u]``: use ``u`` is an embedding lookup
    (its inputs are ids: a Gram of positions without ``D``, a lazily formed gradient that costs a segment sum);
    ``geo[u]``: a convolution whose inputs can be kept raw (:func:`layer_geos`). ``allow_lazy``: layers with no
    more positions than ``tile_rows`` are formed lazily when their factors are less than half their gradient;
    ``long_lazy``: those with more positions too (one block of a few examples: each block's gradients formed once,
    in the tile's batched products, instead of one example at a time in the factor pass)."""
    kinds = []
    for u, (t, d, e) in enumerate(uses):
        v = bool(embed) and embed[u]
        gu = geo[u] if geo else None
        grad = c * d * e
        fac = a_floats(t, d, v, gu) + c * t * e
        ga = PL.ga_pair(t, d, v, gu) / 2  # multiply-adds of the Gram of the inputs' positions
        if t == 1 or (not full and ga + t * t * (c * e + 1) <= grad):
            kinds.append(POS)
        elif allow_lazy and 2 * fac <= grad and (v or t <= tile_rows or long_lazy):
            kinds.append(LAZY)
        else:
            kinds.append(GRAD)
    return tuple(kinds)


def feature_floats(uses: tuple, fb: tuple, c: int, kinds: tuple, embed: tuple = (), geo: tuple = ()) -> int:
    """Floats kept per example (an embedding's ids count as one each; ``geo``: :func:`layer_geos`)."""
    n = c * sum(fb)
    for u, ((t, d, e), k) in enumerate(zip(uses, kinds)):
        v, gu = bool(embed) and embed[u], geo[u] if geo else None
        n += c * d * e if k == GRAD else a_floats(t, d, v, gu) + c * t * e
    return n


def _chunk(transient: int, n: int, budget: int | None = None) -> int:
    """Examples per chunk of the factor computation: about :data:`_CHUNK_BYTES` (at most a sixteenth of the
    budget, so that the engine's blocks, not the chunk, take the memory) of transient memory."""
    target = _CHUNK_BYTES if budget is None else min(_CHUNK_BYTES, budget // 16)
    return int(max(1, min(n, target // max(transient, 1))))


_CHUNK_MAX = 8  # examples per chunk worth widening to (transformer: 2/4/8/16 examples, 1.65/1.50/1.35/1.49 s)


def wider_chunk(chunk: int, transient: int, spare: int, n: int) -> int:
    """Examples per chunk of the factor computation when ``spare`` bytes of the budget are left once the engine's
    panel is planned: wider, up to :data:`_CHUNK_MAX` and ``n``, with at most half the spare (the wider program's
    compiled code is not measured beforehand); ``chunk`` when that is not wider."""
    wide = min(n, _CHUNK_MAX, chunk + max(0, spare) // max(2 * transient, 1))
    return int(max(chunk, wide))


_LAZY_SLICES = 4  # a lazily formed gradient: the second block's whole, the first block's in this many row slices


# ------------------------------------------------------------------------------------------------ planning
@dataclasses.dataclass(frozen=True)
class Setup:
    """What a structured kernel call needs: the plan, its dimensions and the planner's choice (:mod:`._planner`)."""

    plan: Plan
    summed: bool
    full: bool
    uses: tuple
    embed: tuple
    fb: tuple
    c_all: int  # classes of the kernel (1 for pseudo)
    item: int
    act: int  # activation floats of one example (the transient of the factor passes)
    fwd: float
    choice: PL.Choice
    geo: tuple = ()  # per layer: convolutions whose inputs can be kept raw (:func:`layer_geos`)

    @property
    def raw(self) -> tuple:
        """Per layer: the geometry of the convolutions whose inputs are kept raw in this plan, else None."""
        return raw_geos(self.geo, self.kinds)

    @property
    def kinds(self) -> tuple:
        return self.choice.kinds

    @property
    def cc(self) -> int:
        return self.choice.classes

    @property
    def chunked(self) -> bool:
        return self.cc < self.c_all

    def transient(self, c: int | None = None) -> int:
        c = self.cc if c is None else c
        fac = sum(t * (1 if v else d) + c * t * e for (t, d, e), v in zip(self.uses, self.embed)) + c * sum(self.fb)
        return self.item * ((2 + c) * self.act + fac)

    def per_point(self, c: int | None = None, kinds: tuple | None = None) -> int:
        c = self.cc if c is None else c
        kinds = self.kinds if kinds is None else kinds
        return self.item * feature_floats(self.uses, self.fb, c, kinds, self.embed, self.geo)


_MODELS: collections.OrderedDict = collections.OrderedDict()  # model key -> Setup without a choice (:func:`_setup`)


def _setup(apply_fn, params, x1, n1: int, n2: int, sym: bool, mode: str, rows: int, budget, engine: bool) -> Setup:
    """Analyse the model and plan the call: ``rows`` per block (engine) or per tile (traced kernel, all points'
    features resident); ``budget`` None: the planning budget of traced calls (a machine constant)."""
    from .._memory import memory_budget, planning_budget

    summed, full = mode == "pseudo", mode == "full"

    def model():  # the model's analysis and dimensions depend on shapes only: once per model (0.5 s a transformer)
        plan = analyze(apply_fn, params, tuple(x1.shape[1:]), x1.dtype, embeddings=True)
        uses, fb, c_all, item, _ = dims(plan, params, tuple(x1.shape[1:]), x1.dtype, summed)
        act = sum(int(np.prod(s[0], dtype=np.int64)) for e in plan.prog.eqns for s in e.shapes)
        fwd = PL.forward_flops(plan, params, tuple(x1.shape[1:]))
        return Setup(plan, summed, full, uses, embeds(plan), fb, c_all, item, act, fwd, None, layer_geos(plan, uses))

    leaves, treedef = jax.tree_util.tree_flatten(params)
    if all(is_concrete(v) for v in (*leaves, x1)) and jax.sharding.get_abstract_mesh().empty:
        avals = tuple((tuple(jnp.shape(v)), str(jnp.result_type(v))) for v in leaves)
        key = (apply_fn, treedef, avals, tuple(x1.shape[1:]), str(x1.dtype), summed, full)
        base = memoized(_MODELS, key, model, 32)
    else:  # traced (inside jit, shard_map, a mesh): the program is the context's, not kept for eager calls
        base = model()
    # traced calls (budget None) plan from a machine constant, not the free memory: same call, same program
    budget = planning_budget() if budget is None else memory_budget(budget)
    choices = []
    for cc in PL.class_chunks(base.c_all) if mode == "trace" else [base.c_all]:
        seen = set()
        for allow_lazy, long_lazy in ((False, False), (True, False), (True, True)):
            kinds = choose_kinds(base.uses, cc, full, rows, allow_lazy, base.embed, base.geo, long_lazy=long_lazy)
            if kinds in seen:
                continue
            seen.add(kinds)
            choices.append(_option(base, cc, kinds, n1, n2, sym, rows, budget, engine))
    return dataclasses.replace(base, choice=PL.best(choices))


def _option(s: Setup, cc: int, kinds: tuple, n1: int, n2: int, sym: bool, rows: int, budget: int, engine: bool):
    """The modelled FLOPs and peak bytes of one plan (see :mod:`._planner`)."""
    transient = s.transient(cc)
    per = s.per_point(cc, kinds)
    cls = s.c_all * s.c_all if s.full else 1
    out = n1 * n2 * s.item * cls
    if engine:
        bs = rows
        chunk = _chunk(transient, bs, budget)
        nb1 = -(-n1 // bs)
        nb2 = nb1 if sym else -(-n2 // bs)
        fixed = chunk * transient + bs * bs * s.item * cls
        tb = tile_room_bytes(
            s.uses, kinds, cc, s.item, bs, nb1, sym, raw_geos(s.geo, kinds), budget - out - fixed, bs * per
        )
        work = fixed + tb
        cap = _capacity(budget - out - work, bs * per)
        total_blocks = nb1 if sym else nb1 + nb2
        need = min(total_blocks, 2)
        resident = min(max(cap, need), total_blocks)
        passes = PL.feature_passes(nb1, nb2, sym, max(cap, need))
        featurized = passes * bs
        formed = PL.lazy_forms(nb1, nb2, sym, max(cap, need)) * bs
        pairs = (nb1 * (nb1 + 1) // 2 if sym else nb1 * nb2) * bs * bs
        bytes_ = out + work + resident * bs * per
        fits = cap >= need
    else:
        n_all = n1 + (0 if sym else n2)
        chunk = _chunk(transient, n1)
        cuts = _sym_cuts(n1, s.full) if sym else [0, n1]
        nb = len(cuts) - 1
        featurized = n_all
        formed = (nb * nb if sym else 2) * rows
        pairs = n1 * (n1 + rows) / 2 if sym else n1 * n2
        tb = _tile_bytes(s.uses, kinds, cc, s.item, 2 * rows, geo=raw_geos(s.geo, kinds))
        bytes_ = out + n_all * per + chunk * transient + tb
        resident = 0
        fits = bytes_ <= budget
    geo = raw_geos(s.geo, kinds)
    flops = PL.plan_cost(s.uses, s.embed, s.fb, kinds, cc, s.c_all, s.fwd, featurized, formed, pairs, geo)
    return PL.Choice(cc, kinds, flops, int(bytes_), bool(fits), resident)


def _sym_cuts(n: int, full: bool) -> list:
    nb = 1 if full else max(1, min(_SYM_MAX_BLOCKS, n // _SYM_TILE))
    return [i * n // nb for i in range(nb + 1)]


def _tile_bytes(uses, kinds, c, item, rows: int, whole: bool = False, geo: tuple = ()) -> int:
    """Largest transient of one tile of ``rows`` points (two blocks): a lazily formed gradient (the second block's
    and one slice of the first; ``whole``, the eager engine: both blocks'; raw inputs: plus one block's patches),
    or the intermediates of a Gram of positions (raw inputs, :func:`._patches.raw_gram`: also the patches of a
    block, or the Gram of pixels)."""
    geo = geo or (None,) * len(uses)
    lazy_rows = rows if whole else rows // 2 + -(-rows // (2 * _LAZY_SLICES))
    half = max(rows // 2, 1)
    lazy = 0
    for (t, d, e), k, g in zip(uses, kinds, geo):
        if k == LAZY:
            lazy = max(lazy, lazy_rows * c * d * e + (half * t * d if g is not None else 0))
    return max(item * lazy, _pos_bytes(uses, kinds, item, rows, geo))


_MIN_SLICE = 32  # narrowest slices of output features a resident panel's lazy layers are planned with


def narrowest_slices(e: int) -> int:
    """Slices of a lazy layer's ``e`` output features when they are :data:`_MIN_SLICE` wide (or the whole layer
    when it is narrower): the most the engine's panel is planned to need. The transformer's layers ran within ±10%
    at slice widths 32–256 (eighth session), so narrow slices cost memory planning nothing in time."""
    return max(k for k in range(1, e + 1) if e % k == 0 and e // k >= min(_MIN_SLICE, e))


def _panel_tile_bytes(uses, kinds, c, item, bs: int, n_blocks: int, geo: tuple = ()) -> int:
    """Largest transient of a resident panel of ``n_blocks`` blocks of ``bs`` points (:func:`._blocks.blocked`, all
    blocks in one panel): each lazy layer formed for every block of the panel at once in slices of its output
    features at most :data:`_MIN_SLICE` wide — counted twice when one program forms and multiplies them (its
    slices and XLA's copies), once plus one block's patches for raw convolution inputs — or a tile's
    Gram-of-positions intermediates (as :func:`_tile_bytes`)."""
    geo = geo or (None,) * len(uses)
    lazy = 0
    for (t, d, e), k, g in zip(uses, kinds, geo):
        if k == LAZY:
            sliced = n_blocks * bs * c * d * (e // narrowest_slices(e))
            lazy = max(lazy, sliced + bs * t * d if g is not None else 2 * sliced)
    return max(item * lazy, _pos_bytes(uses, kinds, item, 2 * bs, geo))


def _pos_bytes(uses, kinds, item, rows: int, geo: tuple) -> int:
    """The Gram-of-positions part of :func:`_tile_bytes`."""
    half = max(rows // 2, 1)
    pos = 0
    for (t, d, _), k, g in zip(uses, kinds, geo):
        if k == POS:
            extra = 0 if g is None else max(half * t * d, min(_POS_ELEMENTS, half * half * g.t_in**2))
            pos = max(pos, 3 * min(_POS_ELEMENTS, half * half * t * t) + extra)
    return item * pos


def tile_room_bytes(
    uses, kinds, c, item, bs: int, n_blocks: int, sym: bool, geo: tuple, spare: int, per_block: int
) -> int:
    """Bytes set aside for one tile's transients (:func:`._blocks.blocked` and the planner alike): two blocks' whole
    lazy gradients (:func:`_tile_bytes`); or, when those leave too little of ``spare`` (the budget less the output
    and the factor chunk) for every block of a symmetric kernel to stay resident but the panel's lazy layers formed
    in narrow slices would, the latter (:func:`_panel_tile_bytes`; the engine then slices as narrowly as needed)."""
    tb = _tile_bytes(uses, kinds, c, item, 2 * bs, True, geo)
    if not sym or n_blocks < 2 or LAZY not in kinds or _capacity(spare - tb, per_block) >= n_blocks:
        return tb
    tp = _panel_tile_bytes(uses, kinds, c, item, bs, n_blocks, geo)
    return tp if tp < tb and _capacity(spare - tp, per_block) >= n_blocks else tb


def _capacity(free: int, per_block: int) -> int:
    """Blocks of features that fit in ``free`` bytes."""
    return int(free // max(per_block, 1))
