"""A minimal, strict reader and writer of the safetensors format, in NumPy (no ``safetensors`` package needed).

Layout of a file (https://github.com/huggingface/safetensors, "Format"):

* 8 bytes: ``N``, an unsigned 64-bit little-endian integer, the size of the header;
* ``N`` bytes: a UTF-8 JSON object mapping each tensor name to ``{"dtype": ..., "shape": [...],
  "data_offsets": [begin, end]}``, plus an optional ``"__metadata__"`` object of string → string; the header may
  be padded at its end with spaces;
* the byte buffer: each tensor's raw little-endian, C-order bytes at ``[begin, end)`` relative to the start of the
  buffer.

The reader refuses anything the format does not allow: a header longer than the file or than 100 MB (the reference
implementation's limit), JSON that is not an object, unknown keys or dtypes, negative or non-integer sizes,
offsets outside the buffer, a byte range whose length is not ``prod(shape) * itemsize``, overlapping ranges, and
bytes of the buffer no tensor covers ("holes"). Every error names the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

__all__ = ["read_safetensors", "write_safetensors", "SAFETENSORS_DTYPES"]

_MAX_HEADER = 100 * 1024 * 1024


def _bf16() -> Any:
    import ml_dtypes  # a dependency of jax

    return np.dtype(ml_dtypes.bfloat16)


#: safetensors dtype names and their little-endian NumPy dtypes (``BF16`` through ``ml_dtypes``, which jax ships).
SAFETENSORS_DTYPES: dict[str, str] = {
    "BOOL": "|b1",
    "U8": "|u1",
    "I8": "|i1",
    "U16": "<u2",
    "I16": "<i2",
    "F16": "<f2",
    "BF16": "bfloat16",
    "U32": "<u4",
    "I32": "<i4",
    "F32": "<f4",
    "U64": "<u8",
    "I64": "<i8",
    "F64": "<f8",
}


def _np_dtype(name: str) -> np.dtype:
    code = SAFETENSORS_DTYPES[name]
    return _bf16() if code == "bfloat16" else np.dtype(code)


def _st_name(dtype: np.dtype) -> str:
    for name in SAFETENSORS_DTYPES:
        if _np_dtype(name) == dtype:
            return name
    raise TypeError(f"dtype {dtype} has no safetensors equivalent; supported: {sorted(SAFETENSORS_DTYPES)}.")


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into ``({name: array}, metadata)``, validating the header strictly.

    Args:
      path: file path.

    Returns:
      A dict of NumPy arrays in file order (native byte order) and the ``__metadata__`` dict (empty if absent).

    Raises:
      ValueError: the file is not a valid safetensors file; the message names the file and the problem.

    Example:
      >>> import os, tempfile, numpy as np
      >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
      >>> write_safetensors({"dense.kernel": np.ones((2, 3), np.float32)}, p)
      >>> arrays, meta = read_safetensors(p)
      >>> arrays["dense.kernel"].shape, arrays["dense.kernel"].dtype
      ((2, 3), dtype('float32'))
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()

    def bad(msg: str) -> ValueError:
        return ValueError(f"safetensors file {path}: {msg}")

    if len(raw) < 8:
        raise bad(f"only {len(raw)} bytes; a safetensors file starts with an 8-byte header length (truncated?)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER:
        raise bad(f"header length {n} exceeds the 100 MB limit (not a safetensors file?)")
    if 8 + n > len(raw):
        raise bad(f"header length {n} runs past the end of the {len(raw)}-byte file (truncated?)")
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad(f"header must be a JSON object, got {type(header).__name__}")
    buf = memoryview(raw)[8 + n :]
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("__metadata__ must be an object of string keys and string values")
    spans: list[tuple[int, int, str]] = []
    parsed: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name!r} must have exactly the keys dtype, shape, data_offsets, got {info!r}")
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dt not in SAFETENSORS_DTYPES:
            raise bad(f"tensor {name!r} has unsupported dtype {dt!r}; supported: {sorted(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r} (expected a list of non-negative integers)")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(type(o) is int for o in offs)
            or not 0 <= offs[0] <= offs[1] <= len(buf)
        ):
            raise bad(f"tensor {name!r} has data_offsets {offs!r} outside the {len(buf)}-byte data buffer (truncated?)")
        dtype = _np_dtype(dt)
        need = math.prod(shape) * dtype.itemsize
        if offs[1] - offs[0] != need:
            raise bad(
                f"tensor {name!r}: data_offsets span {offs[1] - offs[0]} bytes but dtype {dt} and shape "
                f"{shape} need {need}"
            )
        parsed[name] = (dtype, tuple(shape), offs[0], offs[1])
        spans.append((offs[0], offs[1], name))
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b < pos:
            raise bad(f"tensor {name!r} overlaps the previous tensor's bytes")
        if b > pos:
            raise bad(f"bytes {pos}..{b} of the data buffer belong to no tensor (a hole)")
        pos = e
    if pos != len(buf):
        raise bad(f"the data buffer has {len(buf) - pos} trailing bytes that belong to no tensor")
    out = {}
    for name, (dtype, shape, b, e) in parsed.items():
        a = np.frombuffer(buf[b:e], dtype=dtype).reshape(shape)
        out[name] = a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder == ">" else a.copy()
    return out, dict(meta)


def write_safetensors(arrays: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``{name: array}`` as a safetensors file (tensors in name order, header padded to 8 bytes).

    Args:
      arrays: arrays by name (NumPy/JAX arrays of a dtype in :data:`SAFETENSORS_DTYPES`).
      path: output file.
      metadata: optional string → string ``__metadata__``.

    Example:
      >>> import os, tempfile, numpy as np
      >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
      >>> write_safetensors({"b": np.zeros(3, np.float64)}, p)
      >>> os.path.getsize(p) > 8 + 3 * 8
      True
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    pos = 0
    for name in sorted(arrays):
        a0 = np.asarray(arrays[name])
        a = np.ascontiguousarray(a0).reshape(a0.shape)  # (ascontiguousarray makes a 0-d array (1,))
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        st = _st_name(a.dtype)
        a = a.astype(_np_dtype(st), copy=False)
        data = a.tobytes(order="C")
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [pos, pos + len(data)]}
        chunks.append(data)
        pos += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(os.fspath(path), "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for c in chunks:
            f.write(c)
