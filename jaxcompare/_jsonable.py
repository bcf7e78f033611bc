"""Results made JSON-friendly, one rule for every file the package writes (``results.json``, ``comparison.json``,
the CLI's JSON outputs): strict JSON (no ``NaN``), nothing silently lost."""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping, Set
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def _complex(re: Any, im: Any) -> dict:
    return {"real": _convert(re, ""), "imag": _convert(im, "")}


def _array(a: np.ndarray) -> Any:
    kind = a.dtype.kind
    if kind == "c":
        return _complex(a.real, a.imag)
    if kind == "f" or a.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):  # ml_dtypes floats: kind "V"
        f = a.astype(np.float64)
        if f.ndim == 0:
            v = float(f)
            return v if math.isfinite(v) else None
        return _floats(f)
    if kind in "iub":
        return a.tolist()
    if kind in "US":
        return a.astype(str).tolist()
    if kind == "M":  # datetime64
        return np.datetime_as_string(a).tolist()
    if kind == "O":  # Python objects: each by the rules here
        return _convert(a.tolist(), "")
    if kind == "m":  # timedelta64: seconds
        return _convert(a.astype("timedelta64[ns]").astype(np.float64) / 1e9, "")
    raise TypeError(f"an array of dtype {a.dtype} has no JSON form (numbers, strings, dates and booleans do)")


def _floats(f: np.ndarray) -> list:
    out = f.tolist()

    def fix(v):
        if isinstance(v, list):
            return [fix(u) for u in v]
        return v if math.isfinite(v) else None

    return fix(out)


def to_jsonable(x: Any) -> Any:
    """Arrays (NumPy, JAX, bfloat16), NumPy scalars, dataclasses, named tuples, mappings and sets made
    JSON-friendly, recursively: NaN/inf become ``null``; complex numbers ``{"real": ..., "imag": ...}``; named tuples
    keep their field names (``{field: value}``); sets become sorted lists; dates ISO strings; objects with a
    ``to_dict()`` method their dict. Anything else raises ``TypeError`` naming its type, before a file is written.

    Example:
      >>> from jaxcompare.study import to_jsonable
      >>> to_jsonable({"a": np.array([1.5, np.nan]), "b": np.int32(3), "c": 1 + 2j})
      {'a': [1.5, None], 'b': 3, 'c': {'real': 1.0, 'imag': 2.0}}
    """
    return _convert(x, "")


def _convert(x: Any, at: str) -> Any:
    try:
        return _convert_one(x, at)
    except TypeError as e:
        if at and not str(e).startswith("at "):
            raise TypeError(f"at {at}: {e}") from None
        raise


def _convert_one(x: Any, at: str) -> Any:
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, str):
        return str(x)
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, complex):
        return _complex(x.real, x.imag)
    if isinstance(x, (np.generic, np.ndarray)) or (hasattr(x, "shape") and hasattr(x, "dtype")):
        return _array(np.asarray(x))
    if hasattr(x, "to_dict") and callable(x.to_dict) and not isinstance(x, type):
        return _convert(x.to_dict(), at)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _convert(getattr(x, f.name), f"{at}.{f.name}") for f in dataclasses.fields(x)}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # NamedTuple: its field names are part of the data
        return {f: _convert(v, f"{at}.{f}") for f, v in zip(x._fields, x)}
    if isinstance(x, Mapping):
        return {str(k): _convert(v, f"{at}[{k!r}]") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_convert(v, f"{at}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, (Set, frozenset)):
        items = [_convert(v, at + "{}") for v in x]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if isinstance(x, (datetime.date, datetime.datetime, datetime.time)):
        return x.isoformat()
    raise TypeError(
        f"{type(x).__name__} has no JSON form: results hold numbers, strings, arrays, lists, mappings, dataclasses "
        f"and named tuples; got {x!r:.80}"
    )
