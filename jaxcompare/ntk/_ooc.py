"""Out-of-core kernels: compute a kernel tile by tile into an on-disk ``.npy`` array, resumable after interruption.

Layout of the directory ``path``:

- ``kernel.npy``: the kernel, a standard ``.npy`` file written through ``numpy.lib.format.open_memmap``
  (read it with ``np.load(path / "kernel.npy", mmap_mode="r")``);
- ``norms.npy``: the per-point norms ``[d1; d2]`` of a normalized kernel (computed first, block by block);
- ``state.json``: the ledger — fingerprints of the data and of the model, the shape and dtype, the block size, the
  finished tiles and a CRC-32 checksum of each finished tile (and of the norms);
- ``.lock``: held (``fcntl.flock``) while a process writes; a second writer on the same path is refused.

Each tile is computed by one jitted function of fixed shape (inputs padded to whole blocks), normalized with the
stored norms, written, flushed, and only then recorded in the ledger (atomic ``os.replace`` of a file named after the
process). A run killed at any point therefore leaves only tiles that are either complete and recorded, or unrecorded
and recomputed on resume; the resumed kernel is bit-for-bit the one an uninterrupted run writes.

What is verified before the store is trusted (resume or reopen): the data fingerprint (SHA-256 of params, ``x1``,
``x2``, kernel name, options, block size) and the model fingerprint (SHA-256 of the jaxpr of the tile function at the
tile shapes and of the code the kernel closes over, see :mod:`._fingerprint`) must match — else an error, or a fresh
start with ``overwrite=True``; ``kernel.npy`` must have the recorded shape, dtype and file size (a truncated or
replaced file is recomputed, with a warning); every recorded tile and the norms must match their checksums (edited
ones are recomputed, with a warning). A ledger that cannot be read is an error unless ``overwrite=True``, which always
starts afresh. Free disk space is checked and the file preallocated before any tile is computed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._progress import progress
from .._validation import check_int
from ._common import cosine_normalize, validate_pair, warn_zero_norm
from ._fingerprint import data_fingerprint, model_fingerprint
from ._tiling import TilePlan, check_transform_args, kernel_parts, swap

__all__ = ["kernel_to_disk"]

_VERSION = 2
_SPACE_MARGIN = 64 * 1024**2  # bytes kept free beyond the kernel file


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = _tmp(path)
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_npy(path: Path, a: np.ndarray) -> None:
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        np.save(f, a)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


@contextlib.contextmanager
def _lock(root: Path):
    """Exclusive lock of the run directory (POSIX ``flock``; on other systems per-process temporary names only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(root / ".lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(f"{root} is being written by another process (kernel_to_disk holds {root / '.lock'});"
                               " wait for it to finish or use another path.") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_state(state_path: Path, overwrite: bool) -> dict | None:
    if not state_path.exists():
        return None
    try:
        with open(state_path) as f:
            state = json.load(f)
        if not isinstance(state, dict) or state.get("version") != _VERSION:
            raise ValueError("not a ledger of this version")
        for k in ("fingerprint", "model", "shape", "dtype", "done", "checksums", "norms"):
            state[k]  # noqa: B018 - presence check
        return state
    except (OSError, ValueError, KeyError, TypeError) as e:
        if overwrite:
            return None
        raise ValueError(f"{state_path} cannot be read as a kernel_to_disk ledger ({type(e).__name__}: {e}); pass "
                         "overwrite=True to start afresh, or use another path.") from None


def _open_kernel(kpath: Path, shape: tuple, dtype: np.dtype) -> np.memmap | None:
    """The stored kernel when its header has the recorded shape and dtype and the file its full size, else None.

    The size is checked before opening: ``np.load(mmap_mode="r+")`` would silently zero-extend a truncated file.
    """
    try:
        with open(kpath, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            hshape, fortran, hdtype = read(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError, SyntaxError):
        return None
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if tuple(hshape) != tuple(shape) or np.dtype(hdtype) != dtype or fortran or kpath.stat().st_size != need:
        return None
    return np.load(kpath, mmap_mode="r+")


def _create_kernel(root: Path, kpath: Path, shape: tuple, dtype: np.dtype) -> None:
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    free = shutil.disk_usage(root).free + (kpath.stat().st_size if kpath.exists() else 0)
    if need + _SPACE_MARGIN > free:
        raise OSError(f"not enough free disk space in {root} for a kernel of shape {shape} ({dtype}): it needs "
                      f"{need / 1e9:.2f} GB (+{_SPACE_MARGIN // 1024**2} MB margin), {free / 1e9:.2f} GB are free.")
    tmp = _tmp(kpath)
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    offset = mm.offset
    del mm
    if need and hasattr(os, "posix_fallocate"):  # reserve the blocks now: a full disk is an error here, not a SIGBUS
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, offset + need)
        except OSError as e:
            os.close(fd)
            tmp.unlink()
            raise OSError(f"cannot reserve {need / 1e9:.2f} GB in {root} for the kernel: {e}") from None
        os.close(fd)
    os.replace(tmp, kpath)


def _regions(plan: TilePlan, t: int, n1: int, n2: int) -> list[tuple[slice, slice]]:
    i, j = plan.pairs[t]
    r0, r1 = plan.rows(i, n1)
    c0, c1 = plan.rows(j, n2)
    out = [(slice(r0, r1), slice(c0, c1))]
    if plan.symmetric and i != j:
        out.append((slice(c0, c1), slice(r0, r1)))
    return out


def _verified_tiles(mm: np.memmap, plan: TilePlan, state: dict, n1: int, n2: int) -> set:
    """Recorded tiles whose stored values match their checksums; the others are recomputed (with a warning)."""
    ok, bad = set(), []
    for t in state["done"]:
        sums = state["checksums"].get(str(t))
        regions = _regions(plan, int(t), n1, n2)
        if sums is not None and len(sums) == len(regions) and all(
                _crc(mm[r]) == c for r, c in zip(regions, sums)):
            ok.add(int(t))
        else:
            bad.append(int(t))
    if bad:
        warnings.warn(f"{len(bad)} stored tile(s) do not match their checksums (edited or damaged); recomputing "
                      "them.", RuntimeWarning, stacklevel=3)
    return ok


def kernel_to_disk(
    kernel_fn: Callable,
    params: Any,
    x1: Any,
    x2: Any = None,
    *,
    path: str | os.PathLike,
    block_size: int,
    progress_bar: bool | None = None,
    overwrite: bool = False,
) -> np.memmap:
    """Compute ``kernel_fn(params, x1, x2)`` tile by tile into ``path/kernel.npy``; resume an interrupted run.

    Memory is that of one ``block_size × block_size`` tile plus the per-point norms; the kernel itself lives on
    disk (a dense float32 kernel of 60,000 points is 14.4 GB). With ``x2=None`` only tiles on and above the
    diagonal are computed and mirrored. The package's normalized kernels are normalized tile by tile with norms
    computed first, so the file holds the final kernel. Calling again with the same arguments after an interruption
    (Ctrl-C, a killed job) continues with the missing tiles and yields the identical kernel; calling again after
    completion just opens the file.

    Args:
      kernel_fn: a kernel function ``(params, x1, x2=None) -> (N1, N2, ...)`` (from this package or your own).
      params, x1, x2: its arguments (concrete arrays; this is a host-side loop, not traceable).
      path: a directory (created if missing) for ``kernel.npy``, ``norms.npy`` and the ledger ``state.json``.
      block_size: rows per tile (``>= 1``).
      progress_bar: show progress (default: on unless ``JAXCOMPARE_PROGRESS=0``).
      overwrite: start afresh when ``path`` holds a run with different inputs or model, or an unreadable ledger
        (otherwise that is an error); a run with the same inputs and model is resumed either way.

    Raises:
      ValueError: ``path`` holds another run (or an unreadable ledger) and ``overwrite`` is False.
      RuntimeError: another process is writing to ``path``.
      OSError: not enough free disk space for the kernel.

    Returns:
      The kernel as a read-only ``numpy.memmap`` of shape ``(N1, N2, ...)``.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x_train = jax.random.normal(k3, (10, 3))
      >>> import os, tempfile
      >>> run = os.path.join(tempfile.mkdtemp(), "ntk_run")
      >>> K = jc.kernel_to_disk(jc.trace_ntk(apply_fn), params, x_train, path=run, block_size=4)
      >>> K.shape, sorted(os.listdir(run))                                    # .lock: the writers' lock
      ((10, 10), ['.lock', 'kernel.npy', 'norms.npy', 'state.json'])
      >>> K = np.load(os.path.join(run, "kernel.npy"), mmap_mode="r")      # later, in another process
      >>> bool(np.allclose(K, jc.trace_ntk(apply_fn)(params, x_train)))
      True
    """
    parts = kernel_parts(kernel_fn, "kernel_to_disk")
    bs = check_int(block_size, "block_size", min=1)
    if path is None:
        raise TypeError("path is required: a directory for kernel.npy and its ledger.")
    x1, x2 = validate_pair(x1, x2)
    leaves = jax.tree_util.tree_leaves((params, x1, x2))
    if any(isinstance(l, jax.core.Tracer) for l in leaves):
        raise TypeError("kernel_to_disk writes files: call it eagerly, not under jax.jit/vmap.")
    check_transform_args(params)
    spec = parts.spec
    use_norm = parts.use_norm
    n1 = x1.shape[0]
    xx2 = x1 if x2 is None else x2
    n2 = xx2.shape[0]
    plan = TilePlan(n1, n2, bs, x2 is None and parts.symmetric_known)
    x1p = plan.padded(jnp.asarray(x1))
    x2p = x1p if x2 is None else plan.padded(jnp.asarray(x2))
    tile_jit = jax.jit(lambda p, a, b: parts.tile_fn(p, a, b))
    out = jax.eval_shape(tile_jit, params, x1p[:bs], x2p[:bs])
    shape = (n1, n2) + tuple(out.shape[2:])
    dtype = np.dtype(out.dtype)

    options = spec.options if spec is not None else ()
    transforms = spec.transforms if spec is not None else ()
    fp = data_fingerprint(f"v{_VERSION}|{parts.name}|{transforms}|norm={use_norm}|{bs}|",
                          dict(options=options, params=params, x1=x1, x2=x2))
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                                      (params, x1p[:bs], x2p[:bs]))
    traced = {"tile": (parts.tile_fn, abstract)}
    if use_norm:
        traced["diag"] = (parts.diag_fn, abstract[:2])
    model_fp = model_fingerprint({"kernel_fn": kernel_fn}, traced, spec.apply_fn if spec is not None else None)

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    state_path, kpath, npath = root / "state.json", root / "kernel.npy", root / "norms.npy"
    with _lock(root):
        state = _read_state(state_path, overwrite)
        if state is not None and (state["fingerprint"] != fp or state["model"] != model_fp):
            if not overwrite:
                what = "inputs (params, x1, x2, kernel or block size)" if state["fingerprint"] != fp else \
                    "model (apply_fn or kernel function)"
                raise ValueError(f"{root} holds a kernel run with different {what}; pass overwrite=True to start "
                                 "afresh, or use another path.")
            state = None
        if state is not None and (tuple(state["shape"]) != shape or state["dtype"] != dtype.str):
            state = None  # cannot happen with matching fingerprints unless the ledger was edited
        mm = _open_kernel(kpath, shape, dtype) if state is not None else None
        if state is not None and mm is None:
            warnings.warn(f"{kpath} is missing, truncated or has another shape/dtype than recorded; recomputing the "
                          "kernel.", RuntimeWarning, stacklevel=2)
            state = None
        if state is None:
            mm = None
            _create_kernel(root, kpath, shape, dtype)
            if npath.exists():
                npath.unlink()
            state = dict(version=_VERSION, fingerprint=fp, model=model_fp, shape=list(shape), dtype=dtype.str,
                         block_size=bs, symmetric=plan.symmetric, normalized=use_norm, kernel=parts.name,
                         norms=None, done=[], checksums={})
            _atomic_json(state_path, state)
            mm = _open_kernel(kpath, shape, dtype)
        done = _verified_tiles(mm, plan, state, n1, n2)
        d1 = d2 = None
        if use_norm:
            d1, d2 = _norms(parts.diag_fn, params, x1p, x2p, plan, n1, n2, x2 is None, npath, state, state_path)
        todo = [(t, ij) for t, ij in enumerate(plan.pairs) if t not in done]
        for t, (i, j) in progress(todo, total=len(todo), desc=f"{parts.name} tiles -> {root.name}",
                                  enabled=progress_bar):
            r0, r1 = plan.rows(i, n1)
            c0, c1 = plan.rows(j, n2)
            tile = tile_jit(params, plan.block(x1p, i), plan.block(x2p, j))
            if use_norm:
                tile = cosine_normalize(tile, jnp.asarray(_pad_np(d1[r0:r1], bs)), jnp.asarray(_pad_np(d2[c0:c1], bs)))
            tile = np.asarray(tile)[: r1 - r0, : c1 - c0]
            mm[r0:r1, c0:c1] = tile
            sums = [_crc(mm[r0:r1, c0:c1])]
            if plan.symmetric and i != j:
                mm[c0:c1, r0:r1] = swap(tile, parts.swap_trailing)
                sums.append(_crc(mm[c0:c1, r0:r1]))
            mm.flush()
            done.add(t)
            state["done"] = sorted(done)
            state["checksums"][str(t)] = sums
            _atomic_json(state_path, state)
        if len(state["done"]) != len(done):  # drop records of tiles found damaged and not (yet) rewritten
            state["done"] = sorted(done)
            _atomic_json(state_path, state)
        del mm
        if use_norm and x2 is None:
            warn_zero_norm(d1, "norm")
    return np.load(kpath, mmap_mode="r")


def _norms(diag_fn, params, x1p, x2p, plan, n1, n2, symmetric_x, npath, state, state_path):
    """The stored norms when they match their checksum, else computed (block by block) and stored."""
    if state["norms"] is not None and npath.exists():
        try:
            d = np.load(npath)
            if d.shape == (n1 + n2,) and _crc(d) == state["norms"]:
                return d[:n1], d[n1:]
        except (OSError, ValueError, EOFError):
            pass
        warnings.warn(f"{npath} does not match its checksum (edited or damaged); recomputing the norms.",
                      RuntimeWarning, stacklevel=3)
    diag_jit = jax.jit(lambda p, a: diag_fn(p, a))
    d1 = np.concatenate([np.asarray(diag_jit(params, plan.block(x1p, i))) for i in range(plan.nb1)])[:n1]
    d2 = d1 if symmetric_x else np.concatenate(
        [np.asarray(diag_jit(params, plan.block(x2p, j))) for j in range(plan.nb2)])[:n2]
    d = np.concatenate([d1, d2])
    _atomic_npy(npath, d)
    state["norms"] = _crc(d)
    _atomic_json(state_path, state)
    return d1, d2


def _pad_np(d: np.ndarray, n: int) -> np.ndarray:
    """Pad norms to ``n`` with ones (the padded rows are cropped after normalization)."""
    if d.shape[0] == n:
        return d
    return np.concatenate([d, np.ones(n - d.shape[0], d.dtype)])
