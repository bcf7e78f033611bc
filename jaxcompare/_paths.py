"""Names of a pytree's leaves, one rule for the package: dict keys, sequence indices and attribute names, in order;
a flax nnx ``Variable``'s box (its trailing ``value`` attribute in ``nnx.state(model)``) is not part of the name,
so ``nnx.state(model)`` and ``nnx.to_pure_dict(nnx.state(model))`` name their leaves alike (``query/kernel``)."""

from __future__ import annotations

from typing import Any

__all__ = ["key_parts"]


def key_parts(key_path: Any) -> list[str]:
    """The parts of one leaf's key path (from ``jax.tree_util.tree_flatten_with_path``) as strings.

    Example:
      >>> import jax
      >>> from jaxcompare._paths import key_parts
      >>> [key_parts(p) for p, _ in jax.tree_util.tree_flatten_with_path({"a": [1, {"b": 2}]})[0]]
      [['a', '0'], ['a', '1', 'b']]
    """
    import jax

    kp = tuple(key_path)
    if len(kp) > 1 and isinstance(kp[-1], jax.tree_util.GetAttrKey) and kp[-1].name == "value":
        kp = kp[:-1]
    out = []
    for k in kp:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return out
