"""Bounded memos of pure functions of static data (model, parameter and input shapes): the model's analysis, the
implementation choice, memory estimates and input wrappers are computed once per model and shapes, not per call."""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["memoized"]


def memoized(cache: collections.OrderedDict, key: Hashable, compute: Callable[[], Any], size: int = 256) -> Any:
    """``compute()``, kept in ``cache`` under ``key``; beyond ``size`` entries the least recently used is dropped. An
    unhashable key (an unhashable ``apply_fn``) computes without caching."""
    try:
        hit = cache.get(key)
    except TypeError:
        return compute()
    if hit is None:
        hit = cache[key] = compute()
        while len(cache) > size:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return hit
