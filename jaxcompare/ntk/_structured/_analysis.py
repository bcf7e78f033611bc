"""Layer analysis: which parameter leaves are structured (one dense/conv use reached through layout-only
operations, a bias added right after such a layer, or — with ``embeddings=True`` — a table whose only use is a
gather of whole rows, :mod:`._embed`), which are elementwise scales and shifts (:class:`Scale`: per-example
gradients summed over positions from recorded factors) and which fall back to per-example gradients, and why."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._embed import embed_layout
from ._patches import conv_geo, conv_ok
from ._program import Eqn, Lit, Program, program

__all__ = ["Use", "Scale", "Plan", "analyze"]

_ALIAS = {"reshape", "transpose", "convert_element_type", "copy", "copy_p", "squeeze", "expand_dims"}


@dataclasses.dataclass(frozen=True)
class Use:
    """One structured layer. ``eqn``: index of its dot_general/conv; ``act``: position (0/1) of the activation
    operand; ``out``: the id whose value is perturbed (the layer output, or the bias add's output when ``bias`` is
    set); ``act_perm``/``out_perm``: transpositions to (positions..., features...) with ``n_pos`` position axes
    (for a convolution ``act_perm`` applies to the patches); ``by_patches``: a convolution evaluated as
    patches @ filter (:func:`conv_by_patches`), whose recorded input is then already the ``(1, O..., D)`` patches.
    An embedding lookup (``kind == "embed"``, :mod:`._embed`): ``act`` is the gather's index operand, ``vocab`` the
    table's number of rows, ``mode`` ``"clip"``/``"drop"`` (out-of-range ids)."""

    eqn: int
    leaf: int
    act: int
    out: int
    kind: str  # "dot" | "conv"
    bias: int | None
    act_perm: tuple
    out_perm: tuple
    n_pos: int
    out_shape: tuple
    out_dtype: Any
    filter_shape: tuple = ()
    by_patches: bool = False
    vocab: int = 0
    mode: str = ""
    geo: Any = None  # a convolution's geometry (:class:`._patches.ConvGeo`: its inputs may be kept raw)

    @property
    def n_positions(self) -> int:
        return int(np.prod([self.out_shape[a] for a in self.out_perm[: self.n_pos]], dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class Scale:
    """An elementwise scale ``y = a ⊙ s`` of an activation ``a`` by a leaf ``s`` broadcast over positions (a norm's
    γ), with the shift ``+ b`` added right after it when there is one (its β), or a shift alone (``scale`` None:
    ``y = a + b``). Their per-example gradients are sums over positions, ``Σ_t a_t ⊙ δ_{c,t}`` and ``Σ_t δ_{c,t}``,
    formed from the recorded ``a`` and the sensitivity ``δ`` at ``out`` (:func:`._factors.example_factors`): no
    reduction inside the backward passes. Both leaves stay in :attr:`Plan.fallback` (per-example gradients) for the
    kernels and sketches. ``eqn``/``act``: the ``mul`` and its activation operand (the ``add`` for a shift alone);
    ``perm``: the output's axes as (positions..., features...) with ``n_pos`` position axes; ``order_scale``/
    ``order_shift``: the leaf entry at each feature slot."""

    eqn: int
    act: int
    out: int
    scale: int | None
    shift: int | None
    perm: tuple
    n_pos: int
    order_scale: tuple
    order_shift: tuple
    out_shape: tuple
    out_dtype: Any

    @property
    def n_positions(self) -> int:
        return int(np.prod([self.out_shape[a] for a in self.perm[: self.n_pos]], dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Result of :func:`analyze`: the flat program, structured uses, fallback leaves, the tree structure."""

    prog: Program
    uses: tuple
    fallback: tuple  # leaf indices whose per-example gradients are formed (by the vjp, or by ``scales``)
    n_leaves: int
    treedef: Any
    n_classes: int
    reasons: tuple = ()  # per leaf: how it is handled and why (see :func:`analyze`)
    scales: tuple = ()  # elementwise scales and shifts among the fallback leaves (:class:`Scale`)

    @property
    def structured_leaves(self) -> tuple:
        return tuple(sorted({u.leaf for u in self.uses} | {u.bias for u in self.uses if u.bias is not None}))


def _np_structural(prim: str, v: np.ndarray, p: dict) -> np.ndarray:
    """The layout-only primitives on an index array (for the bias broadcast check)."""
    if prim == "reshape":
        if p.get("dimensions") is not None:
            v = np.transpose(v, p["dimensions"])
        return np.reshape(v, p["new_sizes"])
    if prim == "transpose":
        return np.transpose(v, p["permutation"])
    if prim == "broadcast_in_dim":
        shape = list(p["shape"])
        new = [1] * len(shape)
        for i, d in enumerate(p["broadcast_dimensions"]):
            new[d] = v.shape[i]
        return np.broadcast_to(v.reshape(new), shape)
    if prim == "squeeze":
        return np.squeeze(v, axis=tuple(p["dimensions"]))
    if prim == "expand_dims":
        return np.expand_dims(v, tuple(p["dimensions"]))
    return v  # convert_element_type, copy


def _dot_layout(use_params: dict, act: int, act_ndim: int, w_ndim: int):
    """Permutations mapping the activation to (positions, features) and the output to (positions, out features)."""
    (lc, rc), (lb, rb) = use_params["dimension_numbers"]
    ca = tuple(lc if act == 0 else rc)
    fa = tuple(d for d in range(act_ndim) if d not in ca)
    cw = tuple(rc if act == 0 else lc)
    n_fw = w_ndim - len(cw)
    if act == 0:
        out_perm = tuple(range(len(fa) + n_fw))
    else:
        out_perm = tuple(range(n_fw, n_fw + len(fa))) + tuple(range(n_fw))
    return fa + ca, out_perm, len(fa)


def _conv_layout(use_params: dict):
    o = use_params["dimension_numbers"].out_spec
    perm = (o[0],) + tuple(o[2:]) + (o[1],)
    return perm


def _layout(e: Eqn, act: int, act_ndim: int, w_ndim: int, kind: str):
    """``(act_perm, out_perm, n_pos)`` of a layer (see :class:`Use`)."""
    out_ndim = len(e.shapes[0][0])
    if kind == "conv":
        perm = _conv_layout(e.params)
        return perm, perm, out_ndim - 1
    act_perm, out_perm, n_pos = _dot_layout(e.params, act, act_ndim, w_ndim)
    return act_perm, out_perm, n_pos


def _spread(prog: Program, leaf_shape: tuple, chain: tuple, out_shape: tuple) -> np.ndarray | None:
    """The leaf's entry index at each element of an output it reaches through the layout/broadcast ``chain`` (an
    index array pushed through the chain), or None when the chain cannot be followed."""
    size = int(np.prod(leaf_shape, dtype=np.int64))
    v = np.arange(size, dtype=np.int64).reshape(leaf_shape)
    try:
        for k in chain:
            c = prog.eqns[k]
            v = _np_structural(c.prim.name, v, c.params)
        return np.broadcast_to(v, out_shape)
    except (ValueError, TypeError, KeyError):
        return None


def _whole_per_position(v: np.ndarray, perm: tuple, n_pos: int, size: int) -> np.ndarray | None:
    """With the output's axes permuted to (positions..., features...): the leaf entry at each feature slot when the
    leaf appears whole at every position, each entry once (then its gradient is a sum over positions), else None."""
    v = np.transpose(v, perm)
    n_rows = int(np.prod(v.shape[:n_pos], dtype=np.int64))
    rows = v.reshape(n_rows, -1)
    if rows.shape[1] == size and np.all(rows == rows[:1]) and np.array_equal(np.sort(rows[0]), np.arange(size)):
        return rows[0]
    return None


def _bias_ok(prog: Program, leaf_shape: tuple, chain: tuple, out_shape: tuple, out_perm: tuple, n_pos: int) -> bool:
    """Push an index array of the bias leaf through its broadcast chain: at every position of the layer output the
    bias must appear whole, each entry once (then its gradient is ``Σ_t δ_t``: a constant input feature 1)."""
    v = _spread(prog, leaf_shape, chain, out_shape)
    size = int(np.prod(leaf_shape, dtype=np.int64))
    return v is not None and _whole_per_position(v, out_perm, n_pos, size) is not None


def _elementwise_slots(prog: Program, leaf_shape: tuple, chain: tuple, out_shape: tuple):
    """``(perm, n_pos, order)`` of a leaf broadcast over an output (a norm's scale or shift): the axes along which
    its index varies are the features, the others positions; ``order[j]``: the leaf entry at feature slot ``j``.
    None unless the leaf appears whole at every position, each entry once."""
    v = _spread(prog, leaf_shape, chain, out_shape)
    if v is None:
        return None
    feat = tuple(ax for ax in range(v.ndim) if np.any(v != np.take(v, [0], axis=ax)))
    perm = tuple(ax for ax in range(v.ndim) if ax not in feat) + feat
    order = _whole_per_position(v, perm, v.ndim - len(feat), int(np.prod(leaf_shape, dtype=np.int64)))
    return None if order is None else (perm, v.ndim - len(feat), tuple(int(o) for o in order))


def analyze(apply_fn: Callable, params: Any, x_shape: tuple, x_dtype: Any, embeddings: bool = False) -> Plan:
    """Trace ``apply_fn`` for one example and classify every parameter leaf (see module docstring).

    ``embeddings``: also structure embedding tables (a leaf whose only use is a gather of whole rows): their factors
    are token ids, which the exact kernels of :mod:`._blocks` contract; other consumers of the plan (the sketches)
    treat every use as a dense layer and leave it False."""
    prog, treedef = program(apply_fn, params, x_shape, x_dtype)
    leaves = jax.tree_util.tree_leaves(params)
    n_leaves = len(leaves)
    leaf_of = {prog.in_ids[l]: l for l in range(n_leaves)}
    alias: dict[int, int] = dict(leaf_of)  # id -> leaf, reached by bijective layout operations only
    bchain: dict[int, tuple] = {i: (l, ()) for i, l in leaf_of.items()}  # id -> (leaf, layout/broadcast chain)
    uses_of: dict[int, list] = {l: [] for l in range(n_leaves)}
    consumers: dict[int, list] = {}
    shapes: dict[int, tuple] = {i: tuple(jnp.shape(leaves[l])) for i, l in leaf_of.items()}
    shapes[prog.in_ids[-1]] = (1,) + tuple(x_shape)
    for i, c in prog.consts.items():
        shapes[i] = tuple(np.shape(c))
    candidates = []
    int_cast: set = set()

    def is_ref(r):
        return not isinstance(r, Lit)

    for k, e in enumerate(prog.eqns):
        for o, s in zip(e.outs, e.shapes):
            shapes[o] = s[0]
        name = e.prim.name
        refs = [r for r in e.ins if is_ref(r)]
        for r in refs:
            consumers.setdefault(r, []).append(k)
        if (
            name == "convert_element_type"
            and refs
            and refs[0] in bchain
            and not jnp.issubdtype(e.params["new_dtype"], jnp.inexact)
        ):
            # cast through an integer/bool type (fake quantization): zero gradient under autodiff, not a relabelling
            # -> an ordinary (fallback) use of the leaf, differentiated per example like autodiff does
            uses_of[bchain[refs[0]][0]].append(k)
            int_cast.add(bchain[refs[0]][0])
            continue
        if (name in _ALIAS or name == "broadcast_in_dim") and len(e.ins) == 1 and refs and refs[0] in bchain:
            l, chain = bchain[refs[0]]
            bchain[e.outs[0]] = (l, chain + (k,))
            if name in _ALIAS and refs[0] in alias:
                alias[e.outs[0]] = l
            continue
        if name == "dot_general" and len(e.ins) == 2:
            (_, _), (lb, rb) = e.params["dimension_numbers"]
            w0 = is_ref(e.ins[0]) and e.ins[0] in alias
            w1 = is_ref(e.ins[1]) and e.ins[1] in alias
            if w0 != w1 and not lb and not rb:
                w = 0 if w0 else 1
                other = e.ins[1 - w]
                if is_ref(other) and other not in bchain:
                    candidates.append((k, alias[e.ins[w]], 1 - w, "dot"))
                    uses_of[alias[e.ins[w]]].append(k)
                    continue
        if embeddings and name == "gather" and len(e.ins) == 2:
            op, idx = e.ins
            if (
                is_ref(op)
                and op in alias
                and is_ref(idx)
                and idx not in bchain
                and jnp.issubdtype(jnp.result_type(leaves[alias[op]]), jnp.inexact)
                and embed_layout(e.params, shapes[op], len(e.shapes[0][0])) is not None
            ):
                candidates.append((k, alias[op], 1, "embed"))
                uses_of[alias[op]].append(k)
                continue
        if name == "conv_general_dilated" and len(e.ins) == 2:
            p = e.params
            w1 = is_ref(e.ins[1]) and e.ins[1] in alias
            if (
                w1
                and is_ref(e.ins[0])
                and e.ins[0] not in bchain
                and p["feature_group_count"] == 1
                and p["batch_group_count"] == 1
            ):
                candidates.append((k, alias[e.ins[1]], 0, "conv"))
                uses_of[alias[e.ins[1]]].append(k)
                continue
        for r in refs:
            if r in bchain:
                uses_of[bchain[r][0]].append(k)
    out_ids = {r for r in prog.out_refs if is_ref(r)}
    for r in out_ids:
        if r in bchain:
            uses_of[bchain[r][0]].append(-1)

    uses = []
    for k, leaf, act, kind in candidates:
        if len(uses_of[leaf]) != 1:
            continue  # shared weight or other uses: per-example fallback
        e = prog.eqns[k]
        z = e.outs[0]
        out_shape, out_dtype = e.shapes[0]
        if kind == "embed":
            vocab, out_perm, mode = embed_layout(e.params, shapes[e.ins[0]], len(out_shape))
            use = Use(k, leaf, act, z, kind, None, (), out_perm, len(out_shape) - 1, tuple(out_shape), out_dtype)
            uses.append(dataclasses.replace(use, vocab=vocab, mode=mode))
            continue
        act_ndim = len(shapes[e.ins[act]])
        w_ndim = len(shapes[e.ins[1 - act]])
        act_perm, out_perm, n_pos = _layout(e, act, act_ndim, w_ndim, kind)
        filt, by_patches = (), False
        if kind == "conv":
            rs = e.params["dimension_numbers"].rhs_spec
            filt = tuple(shapes[e.ins[1]][d] for d in rs[2:])
            by_patches = conv_ok(e.params)
        out, bias = z, None
        cons = consumers.get(z, [])
        if len(cons) == 1 and z not in out_ids and prog.eqns[cons[0]].prim.name == "add":
            a = prog.eqns[cons[0]]
            other = a.ins[1] if a.ins[0] == z else a.ins[0]
            if (
                len(a.ins) == 2
                and is_ref(other)
                and other != z
                and other in bchain
                and tuple(a.shapes[0][0]) == tuple(out_shape)
            ):
                b, chain = bchain[other]
                if (
                    len(uses_of[b]) == 1
                    and b != leaf
                    and jnp.issubdtype(jnp.result_type(leaves[b]), jnp.inexact)
                    and _bias_ok(prog, tuple(jnp.shape(leaves[b])), chain, tuple(out_shape), out_perm, n_pos)
                ):
                    out, bias = a.outs[0], b
        use = Use(
            k, leaf, act, out, kind, bias, act_perm, out_perm, n_pos, tuple(out_shape), out_dtype, filt, by_patches
        )
        if kind == "conv":
            o_spec = e.params["dimension_numbers"].out_spec
            out_sp = tuple(out_shape[d] for d in o_spec[2:])
            use = dataclasses.replace(use, geo=conv_geo(e.params, shapes[e.ins[0]], filt, out_sp, bias is not None))
        uses.append(use)
    structured = {u.leaf for u in uses} | {u.bias for u in uses if u.bias is not None}
    fallback = tuple(
        l
        for l in range(n_leaves)
        if l not in structured and uses_of[l] and jnp.issubdtype(jnp.result_type(leaves[l]), jnp.inexact)
    )
    scales = _scales(prog, leaves, shapes, bchain, uses_of, consumers, out_ids, set(structured) | int_cast)
    out_shape = shapes[prog.out_refs[0]] if is_ref(prog.out_refs[0]) else np.shape(prog.out_refs[0].val)
    reasons = _reasons(prog, leaves, uses, uses_of, {l for _, l, _, _ in candidates}, int_cast, scales)
    return Plan(prog, tuple(uses), fallback, n_leaves, treedef, int(out_shape[-1]), reasons, scales)


def _scales(
    prog: Program, leaves: list, shapes: dict, bchain: dict, uses_of: dict, consumers: dict, out_ids: set, taken: set
) -> tuple:
    """The elementwise scales (a ``mul`` of an activation by a leaf broadcast over positions, each entry once per
    position), each with the shift added right after it when its leaf spreads over the same axes, and the shifts
    alone (an ``add`` of such a leaf to an activation): :class:`Scale`. ``taken``: leaves already handled."""

    def own(r):  # (leaf, chain) of an operand that is a leaf used only here, else None
        if isinstance(r, Lit) or r not in bchain:
            return None
        l, chain = bchain[r]
        ok = l not in taken and len(uses_of[l]) == 1 and jnp.issubdtype(jnp.result_type(leaves[l]), jnp.inexact)
        return (l, chain) if ok else None

    def split(e):  # (leaf operand index, (leaf, chain)) of a two-operand op of an activation and such a leaf
        if len(e.ins) != 2:
            return None
        mine = [(i, own(r)) for i, r in enumerate(e.ins)]
        mine = [(i, lc) for i, lc in mine if lc is not None]
        other = e.ins[1 - mine[0][0]] if len(mine) == 1 else None
        if other is None or isinstance(other, Lit) or other in bchain:
            return None
        try:  # the activation may be broadcast by the op itself (size-1 axes, as a LayerNorm's rsqrt(var) is)
            if np.broadcast_shapes(tuple(shapes[other]), tuple(e.shapes[0][0])) != tuple(e.shapes[0][0]):
                return None
        except ValueError:
            return None
        return mine[0]

    out = []
    for k, e in enumerate(prog.eqns):
        name = e.prim.name
        if name not in ("mul", "add"):
            continue
        hit = split(e)
        if hit is None:
            continue
        i, (l, chain) = hit
        out_shape, out_dtype = e.shapes[0]
        slots = _elementwise_slots(prog, tuple(jnp.shape(leaves[l])), chain, tuple(out_shape))
        if slots is None:
            continue
        perm, n_pos, order = slots
        taken.add(l)
        if name == "add":  # a shift alone
            out.append(Scale(k, 1 - i, e.outs[0], None, l, perm, n_pos, (), order, tuple(out_shape), out_dtype))
            continue
        z, shift, order_shift = e.outs[0], None, ()
        cons = consumers.get(z, [])
        if len(cons) == 1 and z not in out_ids and prog.eqns[cons[0]].prim.name == "add":
            a = prog.eqns[cons[0]]
            nxt = split(a)
            if nxt is not None and a.ins[1 - nxt[0]] == z and tuple(a.shapes[0][0]) == tuple(out_shape):
                b, bchain_b = nxt[1]
                sl = _elementwise_slots(prog, tuple(jnp.shape(leaves[b])), bchain_b, tuple(out_shape))
                if sl is not None and sl[:2] == (perm, n_pos):
                    z, shift, order_shift = a.outs[0], b, sl[2]
                    taken.add(b)
        out.append(Scale(k, 1 - i, z, l, shift, perm, n_pos, order, order_shift, tuple(out_shape), out_dtype))
    return tuple(out)


def _reasons(
    prog: Program, leaves: list, uses: list, uses_of: dict, candidate: set, int_cast: set, scales: tuple
) -> tuple:
    """One line per leaf: ``"structured: ..."``, ``"fallback: ..."`` (per-example gradients) or ``"none: ..."``."""
    out = []
    for l, leaf in enumerate(leaves):
        layer = [u for u in uses if u.leaf == l]
        bias = [u for u in uses if u.bias == l]
        scale = [s for s in scales if s.scale == l]
        shift = [s for s in scales if s.shift == l]
        prims = sorted({prog.eqns[k].prim.name if k >= 0 else "model output" for k in uses_of[l]})
        if layer:
            u = layer[0]
            what = {
                "dot": "dense layer (dot_general)",
                "conv": "convolution (patches as inputs)",
                "embed": f"embedding lookup (gather of rows of a {u.vocab}-row table; token ids as inputs)",
            }[u.kind]
            out.append(f"structured: {what}, {u.n_positions} position(s)")
        elif bias:
            out.append("structured: bias fused with its layer (constant input feature 1)")
        elif scale:
            out.append(f"structured: elementwise scale (gradient Σ_t a_t ⊙ δ_t), {scale[0].n_positions} position(s)")
        elif shift:
            out.append(f"structured: elementwise shift (gradient Σ_t δ_t), {shift[0].n_positions} position(s)")
        elif not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            out.append(f"none: dtype {jnp.result_type(leaf)} is not floating-point (no gradient)")
        elif not uses_of[l]:
            out.append("none: not used by apply_fn (zero gradient)")
        elif l in int_cast:
            out.append(
                "fallback: cast through an integer type (zero gradient under autodiff, as per-example gradients give)"
            )
        elif l in candidate:
            out.append(f"fallback: used {len(uses_of[l])} times (shared weight or other uses: {', '.join(prims)})")
        else:
            out.append(f"fallback: used by {', '.join(prims)} (not a dense/conv weight or a fused bias)")
    return tuple(out)
