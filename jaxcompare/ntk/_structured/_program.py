"""The flat program of a model: its jaxpr for one example with calls inlined and variables renamed to ints, and the
interpreter that re-evaluates it with perturbations added to chosen outputs (structured derivatives, see the
package docstring)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from ._patches import conv_by_patches, conv_native

__all__ = ["Unsupported", "Lit", "Eqn", "Program", "program", "run"]

_INLINE = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "checkpoint": "jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
}


class Unsupported(Exception):
    """The structured path cannot handle this model (the message says why); other implementations can."""


class Lit:
    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val


@dataclasses.dataclass
class Eqn:
    prim: Any
    ins: list
    outs: list
    subfuns: tuple
    params: dict
    shapes: list  # output avals (shape, dtype)


@dataclasses.dataclass
class Program:
    eqns: list
    consts: dict
    in_ids: list
    out_refs: list


def _flatten(jaxpr: Jaxpr, consts, in_refs, prog: Program, counter: list) -> list:
    env = {}

    def new():
        counter[0] += 1
        return counter[0]

    def ref(a):
        return Lit(a.val) if isinstance(a, Literal) else env[a]

    def const_id(value):
        i = new()
        prog.consts[i] = value
        return i

    def as_id(r):  # a literal bound to a variable becomes a constant of the flat program
        return const_id(r.val) if isinstance(r, Lit) else r

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
        try:
            bp = eqn.primitive.get_bind_params(eqn.params)
        except (NotImplementedError, TypeError, ValueError, KeyError) as e:
            raise Unsupported(
                f"primitive {eqn.primitive.name!r} cannot be re-evaluated by the interpreter ({type(e).__name__}: {e})"
            ) from e
        subfuns, bind_params = bp if isinstance(bp, tuple) else ((), bp)  # older jax returned (subfuns, params)
        outs = [new() for _ in eqn.outvars]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
        prog.eqns.append(
            Eqn(
                eqn.primitive,
                ins,
                outs,
                tuple(subfuns),
                bind_params,
                [(tuple(v.aval.shape), v.aval.dtype) for v in eqn.outvars],
            )
        )
    return [ref(a) for a in jaxpr.outvars]


def program(apply_fn: Callable, params: Any, x_shape: tuple, x_dtype: Any) -> tuple[Program, Any]:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    abstract = [jax.ShapeDtypeStruct(jnp.shape(l), jnp.result_type(l)) for l in leaves]

    def f(leaf_list, x):
        return apply_fn(jax.tree_util.tree_unflatten(treedef, leaf_list), x)

    try:
        closed = jax.make_jaxpr(f)(abstract, jax.ShapeDtypeStruct((1,) + tuple(x_shape), x_dtype))
    except Exception as e:  # noqa: BLE001 - the user's model, traced for one example: reported, not swallowed
        raise Unsupported(
            f"apply_fn cannot be traced for a single example of shape {(1,) + tuple(x_shape)} ({type(e).__name__}: {e})"
        ) from e
    prog = Program([], {}, [], [])
    counter = [0]
    n_in = len(closed.jaxpr.invars)
    in_ids = list(range(-n_in, 0))  # negative ids: inputs (leaves..., x)
    prog.in_ids = in_ids
    prog.out_refs = _flatten(closed.jaxpr, closed.consts, in_ids, prog, counter)
    return prog, treedef


def run(
    prog: Program, leaf_vals: list, x: jax.Array, eps: dict, capture: dict, patch_convs=frozenset(), raw=frozenset()
):
    """Evaluate the flat program with ``eps`` added to the listed outputs; ``capture[k]`` records operand
    ``capture[k]`` of equation ``k`` (for a convolution in ``patch_convs`` and not in ``raw``: its patches, see
    :func:`conv_by_patches`)."""
    env = dict(prog.consts)
    for i, v in zip(prog.in_ids, list(leaf_vals) + [x]):
        env[i] = v

    def read(r):
        return r.val if isinstance(r, Lit) else env[r]

    acts = {}
    for k, e in enumerate(prog.eqns):
        ins = [read(r) for r in e.ins]
        if k in patch_convs:
            out, acts[k] = conv_by_patches(ins[0], ins[1], e.params)
            if k in raw:
                acts[k] = ins[0]
            outs = [out.astype(e.shapes[0][1])]
        else:
            if k in capture:
                acts[k] = ins[capture[k]]
            if e.prim.name == "conv_general_dilated":
                out = conv_native(ins[0], ins[1], e.params)
            else:
                out = e.prim.bind(*e.subfuns, *ins, **e.params)
            outs = out if e.prim.multiple_results else [out]
        for o, val in zip(e.outs, outs):
            if o in eps:
                val = val + eps[o]
            env[o] = val
    return [read(r) for r in prog.out_refs], acts
