"""``jc.ntk.explain``: which parameters the structured implementation handles by layer factors, which fall back to
per-example gradients, and why; and what ``implementation="auto"`` picks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from ._common import canonical_args, check_apply_fn
from ._implementations import choose_auto
from ._structured import Unsupported, analyze

__all__ = ["Explanation", "explain"]


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Result of :func:`explain`.

    Attributes:
      leaves: ``(path, shape, status, reason)`` per parameter leaf; status ``"structured"``, ``"fallback"``
        (per-example gradients) or ``"none"`` (no gradient: unused by the model). Parameters must be floating-point,
        as for every kernel.
      auto: the implementation ``implementation="auto"`` uses for these shapes.
      unsupported: why the structured analysis could not run at all ("" when it ran).
    """

    leaves: tuple
    auto: str
    unsupported: str = ""

    def __str__(self) -> str:
        lines = [f"implementation='auto' -> {self.auto!r}"]
        if self.unsupported:
            lines.append(f"structured path unavailable: {self.unsupported}")
        for path, shape, status, reason in self.leaves:
            lines.append(f"  {path} {shape}: {status} — {reason}")
        return "\n".join(lines)


def explain(apply_fn: Callable, params: Any, x: Any) -> Explanation:
    """List how ``implementation="structured"`` treats each parameter leaf of ``apply_fn``, and why.

    A leaf is *structured* when its only use is one dense (``dot_general``) or convolution layer reached through
    layout-only operations, a bias added right after such a layer, or an embedding table whose only use is a
    gather of whole rows (its inputs are the token ids), or an elementwise scale or shift — a leaf broadcast over
    positions, each entry once per position, multiplied into or added to an activation (a norm's γ and β): its
    per-example gradient ``Σ_t a_t ⊙ δ_t`` (``Σ_t δ_t``) is formed from the recorded activation and sensitivity;
    every other differentiable leaf *falls back* to per-example gradients in the same pass (shared or tied
    weights, functions of a leaf, weights cast through an integer type...). ``auto`` picks the structured path when
    at least one dense/conv layer is structured.

    Args:
      apply_fn: ``apply_fn(params, x) -> (N, C)`` logits.
      params: the parameter pytree.
      x: a batch ``(N, ...)`` of finite inputs, or a pytree of them (the analysis uses only their per-example shapes
        and dtypes).

    Returns:
      :class:`Explanation` (print it for a table).

    Example:
      >>> def apply_fn(params, x):                 # a dense layer, then a weight shared by two layers
      ...     h = jnp.tanh(x @ params["w1"])
      ...     return jnp.tanh(h @ params["w2"]) @ params["w2"][:, :2]
      >>> params = {"w1": jnp.ones((3, 4)), "w2": jnp.ones((4, 4))}
      >>> print(jc.ntk.explain(apply_fn, params, jnp.ones((5, 3))))
      implementation='auto' -> 'structured'
        ['w1'] (3, 4): structured — dense layer (dot_general), 1 position(s)
        ['w2'] (4, 4): fallback — used 2 times (shared weight or other uses: dot_general, slice)
    """
    check_apply_fn(apply_fn)
    # a pytree batch or (N, ..., C) outputs: the canonical model (one packed input array, flat outputs, ._inputs)
    apply_fn, x, _, n_classes, _, _ = canonical_args(params, x, None, apply_fn)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    shapes = [tuple(jax.numpy.shape(l)) for l in jax.tree_util.tree_leaves(params)]
    auto = choose_auto(apply_fn, params, x, None, n_classes)
    try:
        plan = analyze(apply_fn, params, tuple(x.shape[1:]), x.dtype, embeddings=True)
    except Unsupported as e:
        rows = tuple((p, s, "fallback", "the structured analysis could not run") for p, s in zip(paths, shapes))
        return Explanation(rows, auto, str(e))
    rows = []
    for p, s, r in zip(paths, shapes, plan.reasons):
        status, reason = r.split(": ", 1)
        rows.append((p, s, status, reason))
    return Explanation(tuple(rows), auto)
