"""Out-of-core kernels: compute a kernel tile by tile into an on-disk ``.npy`` array, resumable after interruption,
by one process or by several at once (the hosts of a cluster, the tasks of an array job) on a shared directory.

Layout of the directory ``path``:

- ``kernel.npy``: the kernel, a standard ``.npy`` file (:func:`.load_kernel` reads it verified against the ledgers'
  checksums; ``np.load(path / "kernel.npy", mmap_mode="r")`` reads it unchecked);
- ``norms.npy``: the per-point norms ``[d1; d2]`` of a normalized kernel (computed first, block by block);
- ``state.json``: the store's header — fingerprints of the data and of the model, shape, dtype, block size, the
  checksum of the norms — and the ledger of process 0: its finished tiles with a CRC-32 checksum of each;
  ``state.<p>.json``: the ledger of process ``p > 0``;
- ``.lock``, ``.lock.setup``, ``.lock.<p>``: the writers' locks (:mod:`._disk`); a second writer with the same
  process index is refused, a store in use is never discarded.

Work split: the tiles (on and above the diagonal when ``x2 is None``) are numbered row by row and tile ``t`` belongs
to process ``t mod process_count``. Each process writes its tiles and their mirrors directly (no assembly step);
the norms are computed once, by the first process to open the store, before any tile. Each tile is computed by one
jitted function of fixed shape (inputs padded to whole blocks; normalization and the mirror transpose inside),
handed to a writer thread (the device computes the next tile meanwhile), written, and only then recorded in the
process's ledger (atomic ``os.replace``; ``fsync`` only with ``durable=True``). A run killed at any point leaves
tiles that are complete and recorded, or unrecorded and recomputed on resume; the kernel is bit-for-bit the one an
uninterrupted single-process run writes, whatever the process count.

What is verified before the store is trusted (resume or reopen): the data fingerprint (SHA-256 of params, ``x1``,
``x2``, kernel name, options, block size) and the model fingerprint (SHA-256 of the jaxpr of the tile function at the
tile shapes and of the code the kernel closes over, see :mod:`._fingerprint`) must match — else an error, or a fresh
start with ``overwrite=True``; ``kernel.npy`` must have the recorded shape, dtype and file size (a truncated or
replaced file is recomputed, with a warning); every recorded tile of the process's share and the norms must match
their checksums (edited ones are recomputed, with a warning). A ledger that cannot be read, or files of a store
(``kernel.npy``, ``norms.npy``, ``state.<p>.json``) without the ledger ``state.json``, are an error unless
``overwrite=True``, which always starts afresh; computed work is otherwise never discarded without a warning.
Temporary files of a killed writer are removed on the next open (:func:`._disk.remove_stale_tmp`). Free disk space
is checked and the file preallocated before any tile is computed. The block size is capped at the larger input
(one block).
"""

from __future__ import annotations

import functools
import os
import re
import shutil  # noqa: F401 - patched by tests through this module (disk space)
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._progress import progress
from .._validation import check_int
from ._common import batch_size, cosine_normalize, validate_pair, warn_zero_norm
from ._disk import (
    DirLock,
    atomic_json,
    atomic_npy,
    crc,
    create_npy,
    open_npy,
    read_only,
    read_only_refusal,
    refuse_unledgered,
    remove_stale_tmp,
    store_dir,
)
from ._fingerprint import data_fingerprint, mode_change, model_fingerprint, numeric_mode
from ._inputs import take_rows
from ._ooc_ledger import (
    _VERSION,
    _current_ledger0,
    _ledger_path,
    _ledgers,
    _read_state,
    _verified_tiles,
    _Writer,
    load_kernel,
    processes,
)
from ._tiling import TilePlan, check_transform_args, kernel_parts, swap

__all__ = ["kernel_to_disk"]

_FILES = re.compile(r"kernel\.npy|norms\.npy|state(\.\d+)?\.json")  # what a store writes (beside its .lock* files)


@functools.partial(jax.jit, static_argnames=("bs",))
def _block(x: Any, i: Any, bs: int) -> Any:
    """Block ``i`` (traced: one program for all blocks) of ``bs`` rows of a padded batch (an array or a pytree)."""
    return jax.tree_util.tree_map(lambda l: jax.lax.dynamic_slice_in_dim(l, i * bs, bs), x)


class _Same:
    """A static argument compared by identity: kernel records may hold arrays (keys, projections), not hashable."""

    __slots__ = ("fn", "flag")

    def __init__(self, fn: Callable, flag: bool = False):
        self.fn, self.flag = fn, flag

    def __hash__(self) -> int:
        return hash((id(self.fn), self.flag))

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Same) and other.fn is self.fn and other.flag == self.flag


@functools.partial(jax.jit, static_argnames=("diag",))
def _diag_step(params, a, *, diag):
    return diag.fn(params, a)


@functools.partial(jax.jit, static_argnames=("tile", "use_norm", "mirror"))
def _tile_step(params, a, b, da, db, *, tile, use_norm, mirror):
    """Tile ``k(a, b)`` (normalized with the stored norms) and, for ``mirror``, its transpose (``tile.flag``: swap
    the class axes too): one program, cached across calls and sizes (its arguments are blocks)."""
    k = tile.fn(params, a, b)
    if use_norm:
        k = cosine_normalize(k, da, db)
    return (k, swap(k, tile.flag)) if mirror else (k,)


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
    process_index: int | None = None,
    process_count: int | None = None,
    durable: bool = False,
) -> np.memmap:
    """Compute ``kernel_fn(params, x1, x2)`` tile by tile into ``path/kernel.npy``; resume an interrupted run; split
    the tiles over processes sharing ``path``.

    Memory is that of a few ``block_size × block_size`` tiles plus the per-point norms; the kernel itself lives on
    disk (a dense float32 kernel of 60,000 points is 14.4 GB). With ``x2=None`` only tiles on and above the
    diagonal are computed and mirrored. The package's normalized kernels are normalized tile by tile with norms
    computed first, so the file holds the final kernel. Calling again with the same arguments after an interruption
    (Ctrl-C, a killed job) continues with the missing tiles and yields the identical kernel; calling again after
    completion just opens the file.

    Several processes: every process calls ``kernel_to_disk`` with the same arguments and the same (shared) ``path``;
    process ``p`` of ``P`` computes tiles ``t`` with ``t mod P == p`` (``p, P`` = ``jax.process_index()``,
    ``jax.process_count()`` after ``jax.distributed.initialize()``, or ``process_index=``/``process_count=`` for
    launchers without JAX's runtime, e.g. an array job). Under JAX's runtime every process returns when all tiles
    are written (a barrier); with the overrides a process returns after its own share and warns when other shares
    are still missing — rerun any process (or one with ``process_count=1``) to complete or reopen the kernel. A
    process that died is resumed by rerunning it alone; the kernel is bit-identical to a single-process run.

    Args:
      kernel_fn: a kernel function ``(params, x1, x2=None) -> (N1, N2, ...)`` (from this package or your own).
      params, x1, x2: its arguments (concrete arrays, or pytrees of arrays with a leading batch axis; this is a
        host-side loop, not traceable). The data fingerprint covers every leaf and the structure of ``x1``/``x2``.
      path: a directory (created if missing; not ``""``) for ``kernel.npy``, ``norms.npy`` and the ledgers
        ``state*.json``. Read the finished kernel later with :func:`.load_kernel` (verified) or ``np.load``.
        On a directory this process cannot write (an archive, a read-only mount) the finished kernel of these same
        inputs is returned, verified, and nothing is written; anything else there raises ``PermissionError``.
      block_size: rows per tile (``>= 1``; capped at ``max(N1, N2)``).
      progress_bar: show progress of the norms and the tiles, resumed tiles counted as done (default: on unless
        ``JAXCOMPARE_PROGRESS=0``).
      overwrite: start afresh when ``path`` holds a run with different inputs or model, an unreadable ledger, or
        files of a store without its ledger (otherwise that is an error); a run with the same inputs and model is
        resumed either way.
      process_index, process_count: this process's share (``0 <= process_index < process_count``); both or neither.
      durable: ``fsync`` the kernel and the ledger after every tile (survives a power failure without recomputing;
        slower). Without it a tile lost by a crash of the machine is detected by its checksum and recomputed.

    Raises:
      ValueError: ``path`` holds another run (or an unreadable ledger, or store files without a ledger) and
        ``overwrite`` is False; ``path`` is empty or an existing file; bad ``process_index``/``process_count``.
      RuntimeError: another process is writing to ``path`` with the same process index, or holds the store while
        this call would discard it.
      PermissionError: ``path`` is not writable and holds no finished, intact kernel of these inputs.
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
      >>> K.shape, sorted(f for f in os.listdir(run) if not f.startswith("."))   # and the .lock* files
      ((10, 10), ['kernel.npy', 'norms.npy', 'state.json'])
      >>> K = jc.load_kernel(run)              # later, in another process: checked against the ledger
      >>> bool(np.allclose(K, jc.trace_ntk(apply_fn)(params, x_train)))
      True
      >>> # two tasks of an array job (run at the same time, on any hosts sharing the directory):
      >>> run2 = os.path.join(tempfile.mkdtemp(), "ntk_run")
      >>> import warnings
      >>> with warnings.catch_warnings():      # task 0 returns first and warns that task 1's tiles are missing
      ...     warnings.simplefilter("ignore", RuntimeWarning)
      ...     for task in (0, 1):
      ...         K2 = jc.kernel_to_disk(jc.trace_ntk(apply_fn), params, x_train, path=run2, block_size=4,
      ...                                process_index=task, process_count=2, progress_bar=False)
      >>> bool(np.array_equal(K2, K))
      True
    """
    parts = kernel_parts(kernel_fn, "kernel_to_disk")
    bs = check_int(block_size, "block_size", min=1)
    if path is None:
        raise TypeError("path is required: a directory for kernel.npy and its ledger.")
    root = store_dir(path, "kernel.npy and its ledger")
    pi, pc, runtime = processes(process_index, process_count)
    x1, x2 = validate_pair(x1, x2)
    leaves = jax.tree_util.tree_leaves((params, x1, x2))
    if any(isinstance(l, jax.core.Tracer) for l in leaves):
        raise TypeError("kernel_to_disk writes files: call it eagerly, not under jax.jit/vmap.")
    check_transform_args(params)
    spec = parts.spec
    use_norm = parts.use_norm
    n1 = batch_size(x1)
    n2 = batch_size(x1 if x2 is None else x2)
    bs = _block_for(root, bs, n1, n2)
    plan = TilePlan(n1, n2, bs, x2 is None and parts.symmetric_known)
    x1p = plan.padded(jax.tree_util.tree_map(jnp.asarray, x1))
    x2p = x1p if x2 is None else plan.padded(jax.tree_util.tree_map(jnp.asarray, x2))
    b1, b2 = take_rows(x1p, 0, bs), take_rows(x2p, 0, bs)
    out = jax.eval_shape(lambda p, a, b: parts.tile_fn(p, a, b), params, b1, b2)
    shape = (n1, n2) + tuple(out.shape[2:])
    dtype = np.dtype(out.dtype)

    options = spec.options if spec is not None else ()
    transforms = spec.transforms if spec is not None else ()
    fp = data_fingerprint(
        f"v{_VERSION}|{parts.name}|{transforms}|norm={use_norm}|{bs}|",
        dict(options=options, params=params, x1=x1, x2=x2),
    )
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), (params, b1, b2)
    )
    traced = {"tile": (parts.tile_fn, abstract)}
    if use_norm:
        traced["diag"] = (parts.diag_fn, abstract[:2])
    model_fp = model_fingerprint({"kernel_fn": kernel_fn}, traced, spec.apply_fn if spec is not None else None)

    mode = numeric_mode((params, x1, x2))
    if read_only(root):  # an archived store: a finished kernel of these inputs is read, verified; nothing written
        return _read_only_kernel(root, fp, model_fp, shape, dtype, mode)
    root.mkdir(parents=True, exist_ok=True)
    kpath = root / "kernel.npy"
    lock = DirLock(root)
    desc = f"{parts.name} -> {root.name}" + (f" [{pi + 1}/{pc}]" if pc > 1 else "")
    try:
        with lock.held(DirLock.SETUP):
            state, mm = _setup(root, lock, fp, model_fp, mode, shape, dtype, plan, use_norm, parts.name, overwrite)
            if not lock.acquire(DirLock.writer(pi), block=False):
                raise RuntimeError(
                    f"{root} is being written by another process with process_index={pi} (it holds "
                    f"{root / DirLock.writer(pi)}); wait for it to finish or give each process its "
                    "own index."
                )
            d1 = d2 = None
            if use_norm:
                d1, d2 = _norms(
                    parts.diag_fn, params, x1p, x2p, plan, x2 is None, root / "norms.npy", state, progress_bar, desc
                )
        share = set(range(pi, len(plan.pairs), pc))
        ledgers = _ledgers(root, state)
        done = _verified_tiles(mm, plan, ledgers, share, n1, n2)
        mine = ledgers.get(pi, dict(version=_VERSION, fingerprint=fp, model=model_fp, done=[], checksums={}))
        sums = mine.get("checksums", {})  # a tile listed without its checksum (an edited ledger): not trusted
        keep = [t for t in mine["done"] if (t not in share or t in done) and str(t) in sums]
        mine = dict(mine, done=keep, checksums={str(t): mine["checksums"][str(t)] for t in keep})
        if pi == 0:
            mine = dict(state, done=keep, checksums=mine["checksums"])
        _compute(
            parts,
            use_norm,
            params,
            x1p,
            x2p,
            d1,
            d2,
            plan,
            mm,
            share,
            done,
            mine,
            _ledger_path(root, pi),
            durable,
            progress_bar,
            desc,
        )
        del mm
    finally:
        lock.close()
    if runtime and pc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxcompare.kernel_to_disk:{fp[:16]}")
    recorded = set().union(
        *(map(int, led["done"]) for led in _ledgers(root, _read_state(root / "state.json", True) or state).values())
    )
    missing = len(plan.pairs) - len(recorded & set(range(len(plan.pairs))))
    if missing:
        warnings.warn(
            f"{missing} of {len(plan.pairs)} tiles of {kpath} are not written yet (the shares of other "
            "processes still running or stopped); those entries are 0 until then. Rerun the missing "
            "processes, or any process with process_count=1, to complete the kernel.",
            RuntimeWarning,
            stacklevel=2,
        )
    if use_norm and x2 is None:
        warn_zero_norm(d1, "norm")
    return np.load(kpath, mmap_mode="r")


def _read_only_kernel(root: Path, fp: str, model_fp: str, shape: tuple, dtype: np.dtype, mode: dict) -> np.memmap:
    """The finished kernel of a read-only store, when it is that of these inputs and passes :func:`load_kernel`'s
    checks; otherwise a ``PermissionError`` that says why it cannot be used."""
    state = _read_state(root / "state.json", True)
    if state is None:
        raise read_only_refusal(root, "kernel_to_disk", "it holds no kernel_to_disk ledger (state.json)")
    if state["fingerprint"] != fp or state["model"] != model_fp:
        changed, note = mode_change(state, dict(mode, dtype=dtype.str))
        if changed:  # the likeliest cause, named: x64 or the inputs' dtypes differ from the run that wrote it
            why = f"its kernel was computed in another numeric mode ({note}); restore that mode to read it"
        else:
            what = "inputs (params, x1, x2, kernel or block size)" if state["fingerprint"] != fp else "model"
            why = (
                f"its kernel was computed with different {what} (or another jaxcompare/JAX version: "
                "jc.load_kernel(path) reads a finished kernel, verified, without its inputs)"
            )
        raise read_only_refusal(root, "kernel_to_disk", why)
    try:
        mm = load_kernel(root)
    except (FileNotFoundError, ValueError) as e:  # load_kernel's advice (rerun kernel_to_disk) cannot work here
        raise read_only_refusal(root, "kernel_to_disk", f"its kernel cannot be used ({_without_advice(e)})") from None
    if mm.shape != shape or mm.dtype != dtype:  # matching fingerprints: an edited ledger
        raise read_only_refusal(
            root, "kernel_to_disk", f"its kernel has shape {mm.shape} and dtype {mm.dtype}, not {shape} and {dtype}"
        )
    return mm


def _without_advice(e: Exception) -> str:
    """An error's message without its closing "; rerun …" advice."""
    return str(e).split("; rerun")[0].rstrip(".")


def _block_for(root: Path, bs: int, n1: int, n2: int) -> int:
    """``block_size`` capped at the larger input: one block then, and a tile of ``block_size²`` entries — padding
    but for ``n1 × n2`` of them — would not fit in memory. A store begun before the cap with a block size between
    the two, its tile recorded, continues with the block size it was begun with (its fingerprint includes it)."""
    cap = max(n1, n2)
    if bs <= cap:
        return bs
    state = _read_state(root / "state.json", True) if root.is_dir() else None
    stored = state.get("block_size") if state is not None else None
    if isinstance(stored, bool) or not isinstance(stored, int) or not cap < stored <= bs:
        return cap
    same = isinstance(state["shape"], list) and state["shape"][:2] == [n1, n2]
    return stored if same and state["done"] else cap


def _has_work(root: Path, state: dict) -> bool:
    """Whether the store records anything computed (norms, or tiles in any process's ledger)."""
    return state["norms"] is not None or any(led["done"] for led in _ledgers(root, state).values())


def _setup(root, lock, fp, model_fp, mode, shape, dtype, plan, use_norm, name, overwrite):
    """Under the setup lock: the store's header and the open kernel file, created afresh when missing, of other
    inputs (with ``overwrite``) or damaged (with a warning when that discards computed work); refuses files of a
    store without a ledger (unless ``overwrite``); takes the shared store lock."""
    state_path, kpath = root / "state.json", root / "kernel.npy"
    remove_stale_tmp(root, _FILES, lock)
    state = _read_state(state_path, overwrite)
    if state is None and not overwrite:
        refuse_unledgered(root, _FILES, "kernel_to_disk")
    if state is not None and (state["fingerprint"] != fp or state["model"] != model_fp):
        if not overwrite:
            changed, note = mode_change(state, dict(mode, dtype=dtype.str))
            if changed:
                raise ValueError(
                    f"{root} holds a kernel run begun in another numeric mode ({note}); restore that mode to "
                    "resume it, pass overwrite=True to start afresh, or use another path."
                )
            what = (
                "inputs (params, x1, x2, kernel or block size)"
                if state["fingerprint"] != fp
                else "model (apply_fn or kernel function; the fingerprint is that of the traced tile program, which "
                "also changes with the jaxcompare/JAX version and, for blocked plans, with JAXCOMPARE_MEMORY_BUDGET)"
            )
            raise ValueError(
                f"{root} holds a kernel run with different {what}{f' ({note})' if note else ''}; pass overwrite=True "
                "to start afresh, or use another path."
            )
        state = None
    if state is not None and (state["shape"] != list(shape) or state["dtype"] != dtype.str):
        warnings.warn(  # matching fingerprints: the ledger was edited
            f"{state_path} records a kernel of shape {state['shape']} and dtype {state['dtype']!r}, but these "
            f"inputs give {list(shape)} and {dtype.str!r} (the fingerprints match: the ledger was edited); "
            "recomputing the kernel.",
            RuntimeWarning,
            stacklevel=3,
        )
        state = None
    mm = open_npy(kpath, shape, dtype) if state is not None else None
    if state is not None and mm is None:
        if _has_work(root, state):
            warnings.warn(
                f"{kpath} is missing, truncated or has another shape/dtype than recorded; recomputing the kernel.",
                RuntimeWarning,
                stacklevel=3,
            )
        state = None
    busy = RuntimeError(
        f"{root} is being written by another process (kernel_to_disk holds {root / '.lock'}); wait "
        "for it to finish or use another path."
    )
    if state is None:
        if not lock.acquire(DirLock.STORE, block=False):  # discarding a store nobody writes
            raise busy
        try:
            mm = None
            for old in [root / "norms.npy", *(p for p in root.glob("state.*.json") if _FILES.fullmatch(p.name))]:
                old.unlink(missing_ok=True)
            state = dict(
                version=_VERSION,
                fingerprint=fp,
                model=model_fp,
                shape=list(shape),
                dtype=dtype.str,
                block_size=plan.block_size,
                symmetric=plan.symmetric,
                normalized=use_norm,
                kernel=name,
                norms=None,
                done=[],
                checksums={},
                **mode,
            )
            atomic_json(state_path, state)  # first: a kernel.npy is never left without its ledger
            create_npy(root, kpath, shape, dtype)
            mm = open_npy(kpath, shape, dtype)
        finally:
            lock.release(DirLock.STORE)
    if not lock.acquire(DirLock.STORE, shared=True, block=False):
        raise busy
    return state, mm


def _compute(
    parts, use_norm, params, x1p, x2p, d1, d2, plan, mm, share, done, ledger, ledger_path, durable, progress_bar, desc
):
    """This process's missing tiles: dispatched to the device in order, written by a :class:`_Writer`."""
    bs = plan.block_size
    d1p = d2p = None
    if use_norm:
        d1p = jnp.asarray(_pad_np(d1, plan.nb1 * bs))
        d2p = jnp.asarray(_pad_np(d2, plan.nb2 * bs))
    tile = _Same(parts.tile_fn, parts.swap_trailing)
    order = sorted(share & done) + sorted(share - done)  # resumed tiles first: the bar starts at len(done)
    atomic_json(ledger_path, ledger, durable)
    writer = _Writer(mm, plan, plan.n1, plan.n2, ledger_path, ledger, durable)
    try:
        for t in progress(order, total=len(order), desc=f"{desc} tiles", enabled=progress_bar):
            if t in done:
                continue
            i, j = plan.pairs[t]
            da = db = None
            if use_norm:
                da, db = _block(d1p, i, bs), _block(d2p, j, bs)
            writer.submit(
                t,
                _tile_step(
                    params,
                    _block(x1p, i, bs),
                    _block(x2p, j, bs),
                    da,
                    db,
                    tile=tile,
                    use_norm=use_norm,
                    mirror=plan.symmetric and i != j,
                ),
            )
    finally:
        writer.close()
    mm.flush()
    atomic_json(ledger_path, ledger, durable)


def _norms(diag_fn, params, x1p, x2p, plan, symmetric_x, npath, state, progress_bar, desc):
    """The stored norms when they match their checksum, else computed (block by block) and stored."""
    n1, n2 = plan.n1, plan.n2
    if state["norms"] is not None:
        try:
            d = np.load(npath)
            if d.shape == (n1 + n2,) and crc(d) == state["norms"]:
                return d[:n1], d[n1:]
        except (OSError, ValueError, EOFError):
            pass
        warnings.warn(
            f"{npath} is missing or does not match its checksum (edited or damaged); recomputing the norms.",
            RuntimeWarning,
            stacklevel=3,
        )
    bs = plan.block_size
    blocks = [(x1p, i) for i in range(plan.nb1)] + ([] if symmetric_x else [(x2p, j) for j in range(plan.nb2)])
    ds = [
        np.asarray(_diag_step(params, _block(x, i, bs), diag=_Same(diag_fn)))
        for x, i in progress(blocks, total=len(blocks), desc=f"{desc} norms", enabled=progress_bar)
    ]
    d1 = np.concatenate(ds[: plan.nb1])[:n1]
    d2 = d1 if symmetric_x else np.concatenate(ds[plan.nb1 :])[:n2]
    d = np.concatenate([d1, d2])
    atomic_npy(npath, d)
    if state["norms"] != crc(d):
        state["norms"] = crc(d)
        atomic_json(npath.with_name("state.json"), dict(state, **_current_ledger0(npath.parent, state)))
    return d1, d2


def _pad_np(d: np.ndarray, n: int) -> np.ndarray:
    """Pad norms to ``n`` with ones (the padded rows are cropped after normalization)."""
    if d.shape[0] == n:
        return d
    return np.concatenate([d, np.ones(n - d.shape[0], d.dtype)])
