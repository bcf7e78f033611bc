"""Structured derivatives: gradient kernels from layer inputs and output sensitivities, no per-example gradients.

For a parameter ``W`` used once, in a ``dot_general`` or a convolution whose other operand is an activation ``a``,
the gradient of logit ``c`` for one example is a sum of outer products over the "positions" ``t`` of the layer
(the free axes of ``a``: tokens, pixels, or one position for a dense layer)::

    g_c(x) = Σ_t a_t ⊗ δ_{c,t},        δ_{c,t} = ∂f^c / ∂z_t   (z = the layer output)

so ``<g_c(x_i), g_c(x_j)> = Σ_{t,s} <a_it, a_js> <δ_cit, δ_cjs>``. For a dense layer (one position) the trNTK⁰
contribution is ``(A Aᵀ) ⊙ Σ_c Δ_c Δ_cᵀ`` (shared/spec/ntk.md, "Costs"); for a convolution ``a_t`` are the input
patches (``lax.conv_general_dilated_patches``). With several positions the kernel is formed either from the two
``T × T`` Gram matrices or from the per-example gradients ``Σ_t a_t ⊗ δ_t`` (whichever needs fewer FLOPs).
A bias added right after such a layer is folded in as a constant input feature 1 (``[W; b]``).

Mechanism (documented design): the model is traced to a jaxpr for one example (``apply_fn(params, x[None])``);
calls to ``jit``/``closed_call``/``checkpoint`` are inlined. A parameter leaf is *structured* when its only use is
one ``dot_general`` (without batch dimensions) or ``conv_general_dilated`` (no feature/batch groups), reached through
layout-only operations (reshape, transpose, dtype conversion, squeeze, expand_dims); a bias leaf when its only use is
an ``add`` to such a layer's output (checked by pushing an index array through its broadcast chain). Every other
leaf — shared weights (used more than once), norms, embeddings, parameters entering custom-derivative functions
— falls back to per-example gradients within the same pass. The jaxpr is re-evaluated by a small interpreter that
adds a zero perturbation ``ε_u`` to each structured layer output and records its input; one ``vjp`` per class with
respect to ``(ε, fallback leaves)`` gives all sensitivities ``δ`` and fallback gradients at once, vectorized over
examples with ``vmap``. Custom derivative rules (e.g. ``relu``'s) are kept: such calls are bound, not inlined.
Structured convolutions without input dilation are evaluated as strided-slice patches @ flattened filter (same value;
the patches are the recorded layer inputs) with a phase-wise transpose of the slicing: the C backward passes then
run as matrix products and shifted sums, several times faster on CPU than XLA's transposed convolutions.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from ._common import HIGHEST
from ._implementations import Implementation, register_implementation

__all__ = ["analyze", "factors", "Plan", "Use"]

_ALIAS = {"reshape", "transpose", "convert_element_type", "copy", "copy_p", "squeeze", "expand_dims"}
_INLINE = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
           "checkpoint": "jaxpr", "remat": "jaxpr", "remat2": "jaxpr"}
# Gram-of-positions path only when its N1*N2*T*T intermediate stays below this many elements
_GRAM_ELEMENTS = 2**26


# ---------------------------------------------------------------------------------------------------------------
# Flat program: the jaxpr with calls inlined, variables renamed to ints.
# ---------------------------------------------------------------------------------------------------------------
class _Lit:
    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val


@dataclasses.dataclass
class _Eqn:
    prim: Any
    ins: list
    outs: list
    subfuns: tuple
    params: dict
    shapes: list  # output avals (shape, dtype)


@dataclasses.dataclass
class _Program:
    eqns: list
    consts: dict
    in_ids: list
    out_refs: list


def _flatten(jaxpr: Jaxpr, consts, in_refs, prog: _Program, counter: list) -> list:
    env = {}

    def new():
        counter[0] += 1
        return counter[0]

    def ref(a):
        return _Lit(a.val) if isinstance(a, Literal) else env[a]

    def const_id(value):
        i = new()
        prog.consts[i] = value
        return i

    def as_id(r):  # a literal bound to a variable becomes a constant of the flat program
        return const_id(r.val) if isinstance(r, _Lit) else r

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = const_id(c)
    for v, r in zip(jaxpr.invars, in_refs):
        env[v] = as_id(r)
    for eqn in jaxpr.eqns:
        ins = [ref(a) for a in eqn.invars]
        key = _INLINE.get(eqn.primitive.name)
        sub = eqn.params.get(key) if key else None
        if sub is not None and isinstance(sub, (ClosedJaxpr, Jaxpr)):
            sj, sc = (sub.jaxpr, sub.consts) if isinstance(sub, ClosedJaxpr) else (sub, [])
            outs = _flatten(sj, sc, ins, prog, counter)
            for v, o in zip(eqn.outvars, outs):
                env[v] = as_id(o)
            continue
        bp = eqn.primitive.get_bind_params(eqn.params)
        subfuns, bind_params = bp if isinstance(bp, tuple) else ((), bp)  # older jax returned (subfuns, params)
        outs = [new() for _ in eqn.outvars]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
        prog.eqns.append(_Eqn(eqn.primitive, ins, outs, tuple(subfuns), bind_params,
                              [(tuple(v.aval.shape), v.aval.dtype) for v in eqn.outvars]))
    return [ref(a) for a in jaxpr.outvars]


def _program(apply_fn: Callable, params: Any, x_shape: tuple, x_dtype: Any) -> tuple[_Program, Any]:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    abstract = [jax.ShapeDtypeStruct(jnp.shape(l), jnp.result_type(l)) for l in leaves]

    def f(leaf_list, x):
        return apply_fn(jax.tree_util.tree_unflatten(treedef, leaf_list), x)

    closed = jax.make_jaxpr(f)(abstract, jax.ShapeDtypeStruct((1,) + tuple(x_shape), x_dtype))
    prog = _Program([], {}, [], [])
    counter = [0]
    n_in = len(closed.jaxpr.invars)
    in_ids = list(range(-n_in, 0))  # negative ids: inputs (leaves..., x)
    prog.in_ids = in_ids
    prog.out_refs = _flatten(closed.jaxpr, closed.consts, in_ids, prog, counter)
    return prog, treedef


# ---------------------------------------------------------------------------------------------------------------
# Analysis: which leaves are structured, the layer uses, the fused biases.
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Use:
    """One structured layer. ``eqn``: index of its dot_general/conv; ``act``: position (0/1) of the activation
    operand; ``out``: the id whose value is perturbed (the layer output, or the bias add's output when ``bias`` is
    set); ``act_perm``/``out_perm``: transpositions to (positions..., features...) with ``n_pos`` position axes
    (for a convolution ``act_perm`` applies to the patches); ``by_patches``: a convolution evaluated as
    patches @ filter (:func:`_conv_by_patches`), whose recorded input is then already the ``(1, O..., D)`` patches."""

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

    @property
    def n_positions(self) -> int:
        return int(np.prod([self.out_shape[a] for a in self.out_perm[: self.n_pos]], dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Result of :func:`analyze`: the flat program, structured uses, fallback leaves, the tree structure."""

    prog: _Program
    uses: tuple
    fallback: tuple  # leaf indices differentiated per example
    n_leaves: int
    treedef: Any
    n_classes: int

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


def _layout(e: _Eqn, act: int, act_ndim: int, w_ndim: int, kind: str):
    """``(act_perm, out_perm, n_pos)`` of a layer (see :class:`Use`)."""
    out_ndim = len(e.shapes[0][0])
    if kind == "conv":
        perm = _conv_layout(e.params)
        return perm, perm, out_ndim - 1
    act_perm, out_perm, n_pos = _dot_layout(e.params, act, act_ndim, w_ndim)
    return act_perm, out_perm, n_pos


def _bias_ok(prog: _Program, leaf_shape: tuple, chain: tuple, out_shape: tuple, out_perm: tuple,
             n_pos: int) -> bool:
    """Push an index array of the bias leaf through its broadcast chain: at every position of the layer output the
    bias must appear whole, each entry once (then its gradient is ``Σ_t δ_t``: a constant input feature 1)."""
    size = int(np.prod(leaf_shape, dtype=np.int64))
    v = np.arange(size, dtype=np.int64).reshape(leaf_shape)
    try:
        for k in chain:
            c = prog.eqns[k]
            v = _np_structural(c.prim.name, v, c.params)
        v = np.broadcast_to(v, out_shape)
    except (ValueError, TypeError, KeyError):
        return False
    v = np.transpose(v, out_perm)
    n_rows = int(np.prod(v.shape[:n_pos], dtype=np.int64))
    rows = v.reshape(n_rows, -1)
    return (rows.shape[1] == size and bool(np.all(rows == rows[:1]))
            and np.array_equal(np.sort(rows[0]), np.arange(size)))


def analyze(apply_fn: Callable, params: Any, x_shape: tuple, x_dtype: Any) -> Plan:
    """Trace ``apply_fn`` for one example and classify every parameter leaf (see module docstring)."""
    prog, treedef = _program(apply_fn, params, x_shape, x_dtype)
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

    def is_ref(r):
        return not isinstance(r, _Lit)

    for k, e in enumerate(prog.eqns):
        for o, s in zip(e.outs, e.shapes):
            shapes[o] = s[0]
        name = e.prim.name
        refs = [r for r in e.ins if is_ref(r)]
        for r in refs:
            consumers.setdefault(r, []).append(k)
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
        if name == "conv_general_dilated" and len(e.ins) == 2:
            p = e.params
            w1 = is_ref(e.ins[1]) and e.ins[1] in alias
            if (w1 and is_ref(e.ins[0]) and e.ins[0] not in bchain and p["feature_group_count"] == 1
                    and p["batch_group_count"] == 1):
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
        act_ndim = len(shapes[e.ins[act]])
        w_ndim = len(shapes[e.ins[1 - act]])
        act_perm, out_perm, n_pos = _layout(e, act, act_ndim, w_ndim, kind)
        filt, by_patches = (), False
        if kind == "conv":
            rs = e.params["dimension_numbers"].rhs_spec
            filt = tuple(shapes[e.ins[1]][d] for d in rs[2:])
            by_patches = _conv_ok(e.params)
        out, bias = z, None
        cons = consumers.get(z, [])
        if len(cons) == 1 and z not in out_ids and prog.eqns[cons[0]].prim.name == "add":
            a = prog.eqns[cons[0]]
            other = a.ins[1] if a.ins[0] == z else a.ins[0]
            if (len(a.ins) == 2 and is_ref(other) and other != z and other in bchain
                    and tuple(a.shapes[0][0]) == tuple(out_shape)):
                b, chain = bchain[other]
                if (len(uses_of[b]) == 1 and b != leaf and jnp.issubdtype(jnp.result_type(leaves[b]), jnp.inexact)
                        and _bias_ok(prog, tuple(jnp.shape(leaves[b])), chain, tuple(out_shape), out_perm, n_pos)):
                    out, bias = a.outs[0], b
        uses.append(Use(k, leaf, act, out, kind, bias, act_perm, out_perm, n_pos, tuple(out_shape), out_dtype,
                        filt, by_patches))
    structured = {u.leaf for u in uses} | {u.bias for u in uses if u.bias is not None}
    fallback = tuple(l for l in range(n_leaves) if l not in structured and uses_of[l]
                     and jnp.issubdtype(jnp.result_type(leaves[l]), jnp.inexact))
    out_shape = shapes[prog.out_refs[0]] if is_ref(prog.out_refs[0]) else np.shape(prog.out_refs[0].val)
    return Plan(prog, tuple(uses), fallback, n_leaves, treedef, int(out_shape[-1]))


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: the perturbed program, per example; factors of every structured layer.
# ---------------------------------------------------------------------------------------------------------------
def _conv_ok(params: dict) -> bool:
    """Convolutions evaluated as patches @ filter by :func:`_conv_by_patches` (no input dilation)."""
    return all(int(v) == 1 for v in params["lhs_dilation"])


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
    outs = dp.shape[1:1 + k]
    q = tuple(max(-(-spatial[i] // strides[i]), outs[i] + (dil[i] * (taps_shape[i] - 1)) // strides[i])
              for i in range(k))
    phases: dict = {}
    zero = jnp.zeros((), dp.dtype)
    for j, tap in enumerate(np.ndindex(*taps_shape)):
        off = tuple(tap[i] * dil[i] for i in range(k))
        r = tuple(off[i] % strides[i] for i in range(k))
        sh = tuple(off[i] // strides[i] for i in range(k))
        piece = jax.lax.pad(dp[..., j, :], zero, [(0, 0, 0)] + [(sh[i], q[i] - outs[i] - sh[i], 0)
                                                                for i in range(k)] + [(0, 0, 0)])
        phases[r] = piece if r not in phases else phases[r] + piece
    full = jnp.zeros((b,) + q + (c,), dp.dtype)
    stacked = jnp.stack([phases.get(r, full) for r in np.ndindex(*strides)])  # (s1·…·sk, B, Q..., C)
    stacked = stacked.reshape(tuple(strides) + (b,) + q + (c,))
    perm = (k,) + tuple(x for i in range(k) for x in (k + 1 + i, i)) + (2 * k + 1,)  # (B, Q1, s1, …, C)
    out = jnp.transpose(stacked, perm).reshape((b,) + tuple(q[i] * strides[i] for i in range(k)) + (c,))
    out = jax.lax.slice(out, (0,) * (k + 2), (b,) + tuple(spatial) + (c,))
    return (out,)


_extract_patches.defvjp(_extract_patches_fwd, _extract_patches_bwd)


def _conv_by_patches(lhs: jax.Array, rhs: jax.Array, params: dict) -> tuple[jax.Array, jax.Array]:
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
    a = jnp.transpose(lhs, (ls[0],) + tuple(ls[2:]) + (ls[1],))  # (B, S..., C_in)
    w = jnp.transpose(rhs, tuple(rs[2:]) + (rs[1], rs[0]))  # (K..., C_in, C_out)
    pads = [(0, 0, 0)] + [(int(lo), int(hi), 0) for lo, hi in params["padding"]] + [(0, 0, 0)]
    a = jax.lax.pad(a, jnp.zeros((), a.dtype), pads)
    strides = tuple(int(v) for v in params["window_strides"])
    dil = tuple(int(v) for v in params["rhs_dilation"])
    taps_shape = tuple(int(t) for t in w.shape[:k])
    patches = _extract_patches(a, taps_shape, dil, strides)  # (B, O..., taps, C_in)
    patches = patches.reshape(patches.shape[:-2] + (-1,))
    z = jax.lax.dot_general(patches, w.reshape(-1, w.shape[-1]), (((k + 1,), (0,)), ((), ())),
                            precision=params.get("precision"),
                            preferred_element_type=params.get("preferred_element_type"))
    inv = [0] * (k + 2)  # z is (B, O..., C_out); place its axes where out_spec says
    inv[os_[0]] = 0
    inv[os_[1]] = k + 1
    for i in range(k):
        inv[os_[2 + i]] = 1 + i
    return jnp.transpose(z, inv), patches


def _run(prog: _Program, leaf_vals: list, x: jax.Array, eps: dict, capture: dict, patch_convs=frozenset()):
    """Evaluate the flat program with ``eps`` added to the listed outputs; ``capture[k]`` records operand
    ``capture[k]`` of equation ``k`` (for a convolution in ``patch_convs``: its patches, see
    :func:`_conv_by_patches`)."""
    env = dict(prog.consts)
    for i, v in zip(prog.in_ids, list(leaf_vals) + [x]):
        env[i] = v

    def read(r):
        return r.val if isinstance(r, _Lit) else env[r]

    acts = {}
    for k, e in enumerate(prog.eqns):
        ins = [read(r) for r in e.ins]
        if k in patch_convs:
            out, acts[k] = _conv_by_patches(ins[0], ins[1], e.params)
            outs = [out.astype(e.shapes[0][1])]
        else:
            if k in capture:
                acts[k] = ins[capture[k]]
            out = e.prim.bind(*e.subfuns, *ins, **e.params)
            outs = out if e.prim.multiple_results else [out]
        for o, val in zip(e.outs, outs):
            if o in eps:
                val = val + eps[o]
            env[o] = val
    return [read(r) for r in prog.out_refs], acts


def _as_positions(v: jax.Array, perm: tuple, n_pos: int) -> jax.Array:
    """Per example: transpose to (positions..., features...) and flatten to (T, D)."""
    v = jnp.transpose(v, perm)
    t = int(np.prod(v.shape[:n_pos], dtype=np.int64))
    return v.reshape(t, -1)


def _act_matrix(u: Use, prog: _Program, a: jax.Array) -> jax.Array:
    """Per example ``(T, D)`` layer inputs (patches for a convolution), with a column of ones for a fused bias."""
    if u.kind == "conv" and not u.by_patches:
        p = prog.eqns[u.eqn].params
        a = jax.lax.conv_general_dilated_patches(
            a, u.filter_shape, p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"],
            p["dimension_numbers"], precision=HIGHEST)
    m = a.reshape(-1, a.shape[-1]) if u.by_patches else _as_positions(a, u.act_perm, u.n_pos)
    if u.bias is not None:
        m = jnp.concatenate([m, jnp.ones((m.shape[0], 1), m.dtype)], axis=1)
    return m


def factors(plan: Plan, params: Any, x: jax.Array, *, summed: bool):
    """Per-example factors of the gradients of every logit (``summed``: of the summed logits).

    Returns ``(A, G, J)``: for each structured use, ``A[u]`` ``(N, T, D)`` inputs and ``G[u]`` ``(N, C', T, E)``
    output sensitivities with ``g_c = Σ_t A[:, t] ⊗ G[:, c, t]``; for each fallback leaf ``J[l]`` ``(N, C', P_l)``
    per-example gradients. ``C' = 1`` when ``summed`` else ``C``.
    """
    leaves = jax.tree_util.tree_leaves(params)
    prog = plan.prog
    capture = {u.eqn: u.act for u in plan.uses}
    patch_convs = frozenset(u.eqn for u in plan.uses if u.by_patches)
    c = plan.n_classes
    out_dt = jnp.result_type(*[leaves[u.leaf] for u in plan.uses], *[leaves[l] for l in plan.fallback]) \
        if (plan.uses or plan.fallback) else jnp.result_type(float)

    def per_example(leaf_vals, xi):
        def g(eps, fb):
            vals = list(leaf_vals)
            for l, v in zip(plan.fallback, fb):
                vals[l] = v
            outs, acts = _run(prog, vals, xi[None], dict(zip([u.out for u in plan.uses], eps)), capture,
                                 patch_convs)
            return outs[0][0], acts

        eps0 = [jnp.zeros(u.out_shape, u.out_dtype) for u in plan.uses]
        fb0 = [leaf_vals[l] for l in plan.fallback]
        out, vjp_fn, acts = jax.vjp(g, eps0, fb0, has_aux=True)
        cts = jnp.ones((1, c), out.dtype) if summed else jnp.eye(c, dtype=out.dtype)
        d_eps, d_fb = jax.vmap(vjp_fn)(cts)
        a_mats = [_act_matrix(u, prog, acts[u.eqn]) for u in plan.uses]
        g_mats = [jax.vmap(lambda d, u=u: _as_positions(d, u.out_perm, u.n_pos))(d) for u, d in zip(plan.uses, d_eps)]
        j_mats = [d.reshape(d.shape[0], -1) for d in d_fb]
        return a_mats, g_mats, j_mats

    a, g, j = jax.vmap(per_example, in_axes=(None, 0))(leaves, x)
    a = [m.astype(out_dt) for m in a]
    g = [m.astype(out_dt) for m in g]
    j = [m.astype(out_dt) for m in j]
    return a, g, j


# ---------------------------------------------------------------------------------------------------------------
# Contractions
# ---------------------------------------------------------------------------------------------------------------
def _per_example_grads(a: jax.Array, g: jax.Array) -> jax.Array:
    """``Σ_t a_t ⊗ g_ct`` per example as ``(N, D, C', E)``: one batched product ``(D × T) @ (T × C'E)`` per
    example (operands transposed first; XLA's CPU batched dot is several times faster in this layout)."""
    n, c, t, e = g.shape
    at = jnp.swapaxes(a, 1, 2)  # (N, D, T)
    gt = jnp.transpose(g, (0, 2, 1, 3)).reshape(n, t, c * e)  # (N, T, C'E)
    m = jnp.einsum("ndt,ntk->ndk", at, gt, precision=HIGHEST)
    return m.reshape(n, a.shape[-1], c, e)


def _by_class(m: jax.Array) -> jax.Array:
    """``(N, D, C', E) -> (N, C', D·E)``."""
    n, d, c, e = m.shape
    return jnp.transpose(m, (0, 2, 1, 3)).reshape(n, c, d * e)


def _use_gram(a1, g1, a2, g2, full: bool) -> jax.Array:
    """Contribution of one structured layer: ``(N1, N2)`` (trace over C') or ``(N1, N2, C', C')`` (full)."""
    n1, c, t, e = g1.shape
    n2 = g2.shape[0]
    d = a1.shape[-1]
    if t == 1:
        ga = jnp.einsum("id,jd->ij", a1[:, 0], a2[:, 0], precision=HIGHEST)
        if full:
            gg = jnp.einsum("ice,jde->ijcd", g1[:, :, 0], g2[:, :, 0], precision=HIGHEST)
            return ga[:, :, None, None] * gg
        gg = jnp.einsum("ip,jp->ij", g1.reshape(n1, -1), g2.reshape(n2, -1), precision=HIGHEST)
        return ga * gg
    cost_gram = n1 * n2 * t * t * (d + c * e)
    cost_mat = (n1 + n2) * c * t * d * e + n1 * n2 * c * d * e
    if not full and cost_gram < cost_mat and n1 * n2 * t * t <= _GRAM_ELEMENTS:
        ga = jnp.einsum("itd,jsd->ijts", a1, a2, precision=HIGHEST)
        gg = jnp.einsum("icte,jcse->ijts", g1, g2, precision=HIGHEST)
        return jnp.sum(ga * gg, axis=(2, 3))
    m1 = _per_example_grads(a1, g1)
    m2 = m1 if (a2 is a1 and g2 is g1) else _per_example_grads(a2, g2)
    if full:
        return jnp.einsum("icp,jdp->ijcd", _by_class(m1), _by_class(m2), precision=HIGHEST)
    # the trace sums over all (d, c, e): any common order of the flattened gradients gives the same products
    return jnp.einsum("ip,jp->ij", m1.reshape(n1, -1), m2.reshape(n2, -1), precision=HIGHEST)


def _use_diag(a, g) -> jax.Array:
    n, c, t, e = g.shape
    d = a.shape[-1]
    if t == 1:
        return jnp.sum(a[:, 0] ** 2, axis=-1) * jnp.sum(g ** 2, axis=(1, 2, 3))
    if t * t * (d + c * e) < c * t * d * e:
        ga = jnp.einsum("ntd,nsd->nts", a, a, precision=HIGHEST)
        gg = jnp.einsum("ncte,ncse->nts", g, g, precision=HIGHEST)
        return jnp.sum(ga * gg, axis=(1, 2))
    m = _per_example_grads(a, g)
    return jnp.sum(m * m, axis=(1, 2, 3))


# With x2 = x1 the kernel is symmetric: its tiles below the diagonal are mirrored instead of computed, which saves
# up to half of the Gram FLOPs; tiles of at least this many rows keep the matrix products efficient.
_SYM_TILE = 128
_SYM_MAX_BLOCKS = 4


def _contract(a1, g1, j1, a2, g2, j2, full: bool):
    """Sum of the layer contributions (factors ``a``, ``g``) and of the per-example gradient blocks ``j``."""
    total = None
    for u in range(len(a1)):
        t = _use_gram(a1[u], g1[u], a2[u], g2[u], full)
        total = t if total is None else total + t
    for p, q in zip(j1, j2):
        t = jnp.einsum("icp,jdp->ijcd" if full else "icp,jcp->ij", p, q, precision=HIGHEST)
        total = t if total is None else total + t
    if total is None:
        raise ValueError("params has no differentiable leaf used by apply_fn: there is nothing to differentiate.")
    return total


def _kernel(apply_fn, params, x1, x2, *, mode: str):
    plan = analyze(apply_fn, params, x1.shape[1:], x1.dtype)
    summed = mode == "pseudo"
    full = mode == "full"
    a1, g1, j1 = factors(plan, params, x1, summed=summed)
    if x2 is not None:
        a2, g2, j2 = factors(plan, params, x2, summed=summed)
        k = _contract(a1, g1, j1, a2, g2, j2, full)
    else:
        n = x1.shape[0]
        nb = max(1, min(_SYM_MAX_BLOCKS, n // _SYM_TILE))
        if nb == 1 or full:
            k = _contract(a1, g1, j1, a1, g1, j1, full)
        else:
            # layers with several positions: per-example gradients formed once, then tiled like fallback leaves
            one = [u for u in range(len(a1)) if g1[u].shape[2] == 1]
            a, g = [a1[u] for u in one], [g1[u] for u in one]
            j = list(j1) + [_per_example_grads(a1[u], g1[u]).reshape(n, 1, -1) for u in range(len(a1))
                            if u not in one]
            cuts = [i * n // nb for i in range(nb + 1)]

            def part(fs, i):
                return [f[cuts[i]:cuts[i + 1]] for f in fs]

            tiles = {}
            for i in range(nb):
                for jj in range(i, nb):
                    tiles[i, jj] = _contract(part(a, i), part(g, i), part(j, i), part(a, jj), part(g, jj),
                                             part(j, jj), False)
            k = jnp.concatenate([jnp.concatenate([tiles[i, jj] if i <= jj else tiles[jj, i].T for jj in range(nb)],
                                                 axis=1) for i in range(nb)], axis=0)
    return k / plan.n_classes if summed else k


def _diag(apply_fn, params, x, *, mode: str):
    plan = analyze(apply_fn, params, x.shape[1:], x.dtype)
    summed = mode == "pseudo"
    a, g, j = factors(plan, params, x, summed=summed)
    total = None
    for u in range(len(plan.uses)):
        t = _use_diag(a[u], g[u])
        total = t if total is None else total + t
    for p in j:
        t = jnp.sum(p * p, axis=(1, 2))
        total = t if total is None else total + t
    if total is None:
        raise ValueError("params has no differentiable leaf used by apply_fn: there is nothing to differentiate.")
    return total / plan.n_classes if summed else total


def _applies(apply_fn, params, x) -> bool:
    """True when tracing succeeds and at least one parameter leaf is handled structurally."""
    try:
        plan = analyze(apply_fn, params, tuple(x.shape[1:]), x.dtype)
    except Exception:  # noqa: BLE001 - any tracing/analysis failure means "use another implementation"
        return False
    return len(plan.uses) > 0


register_implementation(
    Implementation(
        name="structured",
        full=lambda f, p, x1, x2: _kernel(f, p, x1, x2, mode="full"),
        trace=lambda f, p, x1, x2: _kernel(f, p, x1, x2, mode="trace"),
        pseudo=lambda f, p, x1, x2: _kernel(f, p, x1, x2, mode="pseudo"),
        trace_diag=lambda f, p, x: _diag(f, p, x, mode="trace"),
        pseudo_diag=lambda f, p, x: _diag(f, p, x, mode="pseudo"),
        applies=_applies,
        description="structured derivatives: (A Aᵀ) ⊙ Σ_c Δ_c Δ_cᵀ per dense/conv layer from a jaxpr analysis; "
                    "other leaves by per-example gradients in the same pass",
    )
)
