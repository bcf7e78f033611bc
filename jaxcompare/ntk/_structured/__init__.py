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

Mechanism (documented design): the model is traced to a jaxpr for one example (``apply_fn(params, x[None])``); calls
to ``jit``/``closed_call``/``checkpoint`` are inlined. A parameter leaf is *structured* when its only use is one
``dot_general`` (without batch dimensions) or ``conv_general_dilated`` (no feature/batch groups), reached through
layout-only operations (reshape, transpose, dtype conversion, squeeze, expand_dims); a bias leaf when its only use
is an ``add`` to such a layer's output (checked by pushing an index array through its broadcast chain). An
elementwise scale or shift — a leaf whose only use is a ``mul`` or ``add`` with an activation, reached through a
broadcast chain that puts it whole at every position (a norm's γ and β) — has the per-example gradient
``Σ_t a_t ⊙ δ_{c,t}`` (``Σ_t δ_{c,t}``): the activation is recorded, a perturbation at the product (or at the shift
right after it) gives ``δ``, and the sum over positions is formed after the backward passes (:class:`._analysis.Scale`;
the kernels see these leaves as per-example gradients). Every other leaf — shared weights (used more than once),
tied embeddings, functions of a leaf, parameters entering custom-derivative functions — falls back to per-example
gradients within the same pass. An embedding table whose only use is a gather of whole
rows is structured in the exact kernels (:mod:`._embed`: the layer's inputs are the token ids). The jaxpr is
re-evaluated by a small interpreter that adds a zero perturbation ``ε_u`` to each structured layer output and
records its input; one ``vjp`` per class with respect to ``(ε, fallback leaves)`` gives all sensitivities ``δ`` and
fallback gradients at once, vectorized over examples with ``vmap``. Custom derivative rules (e.g. ``relu``'s) are
kept: such calls are bound, not inlined. The convolution strategy is chosen per layer and backend
(:func:`._patches.prefer_patches`): on CPU a strided convolution without input dilation is evaluated as
strided-slice patches @ flattened filter (same value; the patches are the recorded layer inputs) with a phase-wise
transpose of the slicing, faster there than XLA's input-dilated transposed convolution; stride-1 convolutions (and
every convolution on GPU/TPU) run natively, and their patches are strided slices of the recorded input, formed after
the C backward passes.

Contraction (:mod:`._blocks`): each layer's factors are reduced, per chunk of examples, to the cheapest exact form
(per-example gradients; the factors themselves, contracted as a Gram of positions where that needs fewer FLOPs;
or the factors kept and the gradients re-formed per tile where memory is short), chosen per layer by FLOPs and
memory; eager calls run on a blocked engine that computes each block's features once and keeps as many blocks as
the memory budget allows.

Layout of this subpackage: :mod:`._program` (flat program and interpreter), :mod:`._analysis` (which leaves are
structured, and why the others are not), :mod:`._patches` (convolutions as patches with a custom VJP),
:mod:`._factors` (per-example factors), :mod:`._blocks` (layouts, features, tiles, the blocked engine),
:mod:`._contract` (per-example gradients of stacked factors, used by the sketches), :mod:`._embed` (embedding
lookups), :mod:`._layouts` (layer dimensions, layouts, plans), :mod:`._planner` (FLOP model, chunks of classes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._common import Implementation
from ._analysis import Plan, Use, analyze
from ._blocks import diag, kernel
from ._factors import factors
from ._program import Unsupported

__all__ = ["analyze", "factors", "Plan", "Use", "Unsupported", "applies", "STRUCTURED"]


def applies(apply_fn: Callable, params: Any, x: Any) -> tuple[bool, str]:
    """``(True, "")`` when at least one parameter leaf is handled structurally, else ``(False, why)``.

    Only :class:`Unsupported` (a model the analysis cannot handle, with its reason) means "use another
    implementation"; any other exception is a bug and propagates.
    """
    try:
        plan = analyze(apply_fn, params, tuple(x.shape[1:]), x.dtype)
    except Unsupported as e:
        return False, str(e)
    if not plan.uses:
        return False, "no parameter leaf is a dense/conv weight used once (every leaf falls back)"
    return True, ""


STRUCTURED = Implementation(
    name="structured",
    full=lambda f, p, x1, x2: kernel(f, p, x1, x2, mode="full"),
    trace=lambda f, p, x1, x2: kernel(f, p, x1, x2, mode="trace"),
    pseudo=lambda f, p, x1, x2: kernel(f, p, x1, x2, mode="pseudo"),
    trace_diag=lambda f, p, x: diag(f, p, x, mode="trace"),
    pseudo_diag=lambda f, p, x: diag(f, p, x, mode="pseudo"),
    description="structured derivatives: (A Aᵀ) ⊙ Σ_c Δ_c Δ_cᵀ per dense/conv layer from a jaxpr analysis; "
    "other leaves by per-example gradients in the same pass",
)
