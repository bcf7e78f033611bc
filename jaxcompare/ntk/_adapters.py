"""Adapters from common model libraries to the ``apply_fn(params, x) -> (N, C)`` convention.

flax is imported lazily: the core package needs only jax, numpy, scipy and optax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from ._inputs import ModelModeError

__all__ = ["from_linen", "from_nnx", "from_stax", "linen_layers_fn"]


def from_linen(
    module: Any, variables: Any, *, trainable: str = "params", method: Any = None, **apply_kwargs: Any
) -> tuple[Callable, Any]:
    """``(apply_fn, params)`` for a flax.linen module: differentiate the ``trainable`` collection only.

    Other collections (e.g. ``batch_stats``) are held fixed inside ``apply_fn`` (use them in inference mode, e.g.
    pass ``train=False`` through ``apply_kwargs``). A module that updates a collection (BatchNorm in training mode)
    or draws dropout masks raises a ``ValueError`` saying so when the kernel is computed.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(2)])
      >>> x = jax.random.normal(jax.random.key(1), (10, 3))
      >>> variables = model.init(jax.random.key(0), x)
      >>> apply_fn, params = jc.from_linen(model, variables)
      >>> K = jc.trace_ntk(apply_fn)(params, x)
      >>> K.shape
      (10, 10)
    """
    if not hasattr(module, "apply"):
        raise TypeError(f"module must be a flax.linen Module, got {type(module).__name__}.")
    if not isinstance(variables, dict) and not hasattr(variables, "keys"):
        raise TypeError("variables must be the dict returned by module.init(...).")
    if trainable not in variables:
        raise ValueError(f"variables has no collection {trainable!r}; it has {sorted(variables.keys())}.")
    params = variables[trainable]
    rest = {k: v for k, v in variables.items() if k != trainable}

    try:
        import flax.errors as ferr

        training_errors: tuple = (ferr.ModifyScopeVariableError, ferr.InvalidRngError)
    except ImportError:  # pragma: no cover - a module with an `apply` method that is not flax
        training_errors = ()

    def apply_fn(p, x):
        kw = dict(apply_kwargs)
        if method is not None:
            kw["method"] = method
        try:
            return module.apply({trainable: p, **rest}, x, **kw)
        except training_errors as e:
            raise ModelModeError(
                f"{type(module).__name__} is called in training mode: {type(e).__name__}: {_msg(e)}. "
                "A kernel needs a deterministic model whose examples are independent (no batch statistics, no "
                "dropout): pass the module's inference flag through from_linen, e.g. from_linen(model, variables, "
                "train=False), or build it with BatchNorm(use_running_average=True) / Dropout(deterministic=True)."
            ) from e

    return apply_fn, params


def linen_layers_fn(module: Any, variables: Any, *, trainable: str = "params", **apply_kwargs: Any) -> Callable:
    """``layers_fn(params, x)`` → list of every submodule's output (``capture_intermediates``), for
    :func:`jaxcompare.embedding_kernel`. Non-array outputs are skipped."""
    if not hasattr(module, "apply"):
        raise TypeError(f"module must be a flax.linen Module, got {type(module).__name__}.")
    if not isinstance(variables, dict) and not hasattr(variables, "keys"):
        raise TypeError("variables must be the dict returned by module.init(...).")
    rest = {k: v for k, v in variables.items() if k != trainable}

    def layers_fn(p, x):
        _, state = module.apply(
            {trainable: p, **rest}, x, capture_intermediates=True, mutable=["intermediates"], **apply_kwargs
        )
        return [l for l in jax.tree_util.tree_leaves(state["intermediates"]) if hasattr(l, "shape") and l.ndim >= 1]

    return layers_fn


def from_nnx(module: Any, *, trainable: Any = None) -> tuple[Callable, Any]:
    """``(apply_fn, params)`` for a flax.nnx module through ``nnx.split``/``nnx.merge``.

    Args:
      module: an ``nnx.Module`` whose ``__call__(x)`` returns logits ``(N, C)``.
      trainable: an nnx filter for the differentiated state (default ``nnx.Param``); the rest is held fixed.

    Raises:
      ValueError: the module is in training mode (a BatchNorm with ``use_running_average=False``, a Dropout with
        ``deterministic=False``): call ``model.eval()`` first.
    """
    try:
        from flax import nnx
    except ImportError as e:  # pragma: no cover - exercised only without flax
        raise ImportError("from_nnx needs flax: pip install 'jaxcompare[demo]' (or flax).") from e
    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be a flax.nnx.Module, got {type(module).__name__}.")
    training = _nnx_training(nnx, module)
    if training:
        raise ModelModeError(
            f"{type(module).__name__} is in training mode ({'; '.join(training)}): its outputs depend on the batch "
            "(batch statistics) or on random masks, so per-example gradients and kernels are undefined: call "
            "model.eval() first (it sets use_running_average=True and deterministic=True), then from_nnx(model)."
        )
    from flax.errors import TraceContextError  # (flax.nnx has no `errors` module)

    filt = nnx.Param if trainable is None else trainable
    graphdef, params, rest = nnx.split(module, filt, ...)

    def apply_fn(p, x):
        try:
            return nnx.merge(graphdef, p, rest)(x)
        except TraceContextError as e:  # state mutated in the call: a training-mode layer we missed
            raise ModelModeError(
                f"{type(module).__name__} mutates its state when called ({_msg(e)}): it runs in training mode "
                "(batch statistics updated or dropout drawn); call model.eval() first, then from_nnx(model) — and "
                "where __call__ passes use_running_average=False or deterministic=False to a layer itself, make it "
                "follow the layer's own setting instead."
            ) from e

    return apply_fn, params


def _msg(e: Exception) -> str:
    """flax's message without its documentation link and final period."""
    return str(e).split(" (https")[0].rstrip(".")


def _nnx_training(nnx: Any, module: Any) -> list:
    """Submodules in training mode: batch statistics updated (``use_running_average=False``) or dropout active
    (``deterministic=False`` with a non-zero rate)."""
    found = []
    for path, m in nnx.iter_modules(module):
        where = "/".join(str(p) for p in path) or "<root>"
        if getattr(m, "use_running_average", None) is False:
            found.append(f"{type(m).__name__} {where!r} has use_running_average=False")
        rate = getattr(m, "rate", getattr(m, "dropout_rate", None))
        if getattr(m, "deterministic", None) is False and isinstance(rate, (int, float)) and rate > 0:
            found.append(f"{type(m).__name__} {where!r} has deterministic=False (rate {rate})")
    return found


def from_stax(apply_fn: Callable, **apply_kwargs: Any) -> Callable:
    """A stax-style ``apply_fn(params, inputs, **kwargs)`` (params a nested tuple/list) as ``apply_fn(params, x)``."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable, got {type(apply_fn).__name__}.")

    def fn(params, x):
        return apply_fn(params, x, **apply_kwargs)

    return fn
