"""The on-disk store of :func:`project_gradients` (``path=``): projected features written block by block, resumable
after interruption, by one process or by several at once (the hosts of a cluster, the tasks of an array job) on a
shared directory — the scheme of :func:`kernel_to_disk` (:mod:`._ooc`), with blocks of examples instead of tiles.

Layout of the directory ``path``:

- ``block_000000.npy``, … : the features of block ``b`` (examples ``b·block_size`` to ``(b+1)·block_size``);
- ``state.json``: the store's header — fingerprint of the data, options and model (``fingerprint``; ``model`` alone),
  ``n``, ``block_size``, the numeric mode (``x64``, ``input_dtypes``: named when a resume is refused for them) — and
  the ledger of process 0: the blocks it finished with a CRC-32 checksum of each (``blocks``); once assembled also
  ``complete``, ``shape`` and ``dtype`` of ``features.npy``;
  ``state.<p>.json``: the ledger of process ``p > 0``;
- ``features.npy``: all blocks, written once every block is recorded (bfloat16 features as float32: the ``.npy``
  format has no bfloat16; the values are the same);
- ``.lock``, ``.lock.setup``, ``.lock.<p>``: the writers' locks (:class:`._disk.DirLock`): a second writer with the
  same process index is refused, a store in use is never discarded.

Work split: block ``b`` belongs to process ``b mod process_count`` (``jax.process_index()``/``process_count()``, or
the ``process_index=``/``process_count=`` of an array job). A block is computed (the next one is dispatched to the
device while it is written), written atomically (``os.replace``) and only then recorded in its process's ledger; a
run killed at any point leaves blocks that are complete and recorded, or unrecorded and recomputed on resume.

Assembly: after its share, a process takes the setup lock and reads every ledger; when every block is recorded it
writes ``features.npy`` (recomputing, with a warning, a recorded block whose file does not match its checksum) unless
another process already did. Under JAX's runtime every process first waits for the others (a barrier), so one of
them assembles and all return the features. With the overrides the last process to finish assembles; a process that
finds blocks of other shares missing warns and returns None (``features.npy`` exists only once complete) — rerun the
missing processes, or any process with ``process_count=1``, to complete the store.

What is verified before the store is trusted: the fingerprint — of the data, the options, the model and the
projection's hash layout (a store begun by an older structured sketch holds another sketch) — else an error, or a
fresh start with ``overwrite=True``; every block of the process's share against its recorded checksum (edited or
lost blocks are recomputed); ``features.npy`` on reopen, block by block against the same checksums (else reassembled,
with a warning). The features are bit-for-bit those of an uninterrupted single-process run, whatever the process count.
Files of a store (``features.npy``, ``block_*.npy``, ``state.<p>.json``) without the ledger ``state.json`` are refused
unless ``overwrite=True`` (another program's, or a store whose ledger was lost); recorded blocks found damaged are
recomputed with a warning; temporary files of a killed writer are removed on the next open
(:func:`._disk.remove_stale_tmp`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._disk import (
    DirLock,
    atomic_json,
    atomic_npy,
    crc,
    read_only,
    read_only_refusal,
    refuse_unledgered,
    remove_stale_tmp,
    store_dir,
    tmp_name,
)
from ._fingerprint import data_fingerprint, mode_change, model_fingerprint, numeric_mode
from ._ooc_ledger import _ledger_path, _ledgers, processes
from ._projection import rows_dtype

__all__ = ["features_to_disk", "stored_block_size", "check_store_path", "finite_block", "nonfinite_message"]

_VERSION = 2  # ledger format (1: one process; its stores are read as process 0's ledger)
_SALT = "project_gradients v1"  # the fingerprint's salt, unchanged: stores made before stay valid
_FILES = re.compile(r"features\.npy|block_\d{6,}\.npy|state(\.\d+)?\.json")  # what a store writes (and .lock*)


def _fingerprints(apply_fn, params, x, projection, summed, bs, policy) -> tuple[str, str]:
    """``(fingerprint of data, options and model, fingerprint of the model)``."""
    dim = projection.dim if hasattr(projection, "dim") else (projection.dim_in, projection.dim_out)  # Kronecker
    kind = str(getattr(projection, "kind", ""))
    options = (type(projection).__name__, dim if isinstance(dim, tuple) else int(dim), kind, summed, bs)
    nnz = getattr(projection, "nnz", 1)
    if nnz != 1:  # another sparse sketch (stores of the default nnz = 1 stay valid)
        options += (("nnz", int(nnz)),)
    if kind in ("sparse", "rademacher") and jax.config.jax_enable_x64:  # their draws under x64 changed: see
        options += (("draws", "32-bit"),)  # _projection._signs (stores made without x64 stay valid)
    if kind == "gaussian" and rows_dtype(params) != jnp.float32:  # drawn in the params' dtype before; now in
        options += (("draws", "float32"),)  # float32 whatever it is (float32 stores stay valid)
    if policy != "highest":  # features under another policy are other features (stores made before it stay valid)
        options += (policy,)
    layout = getattr(projection, "layout", 1)
    if layout != 1:  # another hash layout of the same projection is another sketch (layout-1 stores stay valid)
        options += (("layout", layout),)
    probes = getattr(projection, "output_probes", None)
    if probes is not None:  # features of output probes are other features (stores without them stay valid)
        options += (("output_probes", probes),)
    data = data_fingerprint(_SALT, {"params": params, "x": x, "key": projection.key, "options": repr(options)})
    model = model_fingerprint(
        {}, {"model": (apply_fn, (params, jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype)))}, apply_fn
    )
    return data + model, model


def finite_block(block: Callable, b: int, a: Any, lo: int, *, raise_: bool = True) -> Any:
    """Block ``b`` of the features (rows from ``lo``) when finite. Params and inputs were checked finite, so inf/NaN
    features are the model's own (non-finite gradients at some points) or a fault of the backend: the block is
    compiled afresh and computed once more (XLA:CPU was seen to return an all-NaN result from one compiled program,
    see :func:`jaxcompare.ntk._kernels._checked_result`); finite then, it is returned with a warning, else
    :class:`FloatingPointError` names the points (``raise_=False``: returns ``(block, points)`` instead). Never
    stored, never returned, silently."""
    if np.all(np.isfinite(a)):
        return a if raise_ else (a, [])
    jax.clear_caches()
    a2 = block(b)
    if bool(jax.numpy.all(jax.numpy.isfinite(a2))):
        warnings.warn(
            f"block {b} of the projected features came back non-finite once for finite params and inputs and finite "
            "when compiled and computed again: a nondeterministic fault of the backend; the recomputed block is used.",
            RuntimeWarning,
            stacklevel=4,
        )
        a2 = np.asarray(a2) if isinstance(a, np.ndarray) else a2
        return a2 if raise_ else (a2, [])
    bad = np.logical_not(np.isfinite(np.asarray(a2))).reshape(a2.shape[0], -1).any(axis=1)
    points = (lo + np.flatnonzero(bad)).tolist()
    if raise_:
        raise FloatingPointError(nonfinite_message(points))
    return a2, points


def nonfinite_message(points: list) -> str:
    return (
        "the projected features have inf/NaN entries although params and inputs are finite, twice (compiled afresh "
        f"the second time): the model's gradients are not finite at (first 10) x points {points[:10]} (e.g. log(0), "
        "the derivative of sqrt at 0, an overflowing exp or division by zero inside apply_fn; float16 holds values up "
        "to 65504). No features are returned or stored for them; evaluate jax.grad of your model at those points."
    )


def check_store_path(path: Any) -> Path:
    """``path`` as a directory for the store: a new or existing directory, not a file, not ``""``."""
    return store_dir(path, "the features' store")


def stored_block_size(root: Path, n: int) -> int | None:
    """The block size of the store at ``root`` for ``n`` examples, when it has a readable header: a resumed call
    with the automatic block size continues with the blocks it began with (the automatic size follows the memory
    free at the time, and the fingerprint includes the block size)."""
    try:
        state = json.loads((root / "state.json").read_text())
        bs = state.get("block_size") if isinstance(state, dict) and state.get("n") == n else None
    except (OSError, ValueError):
        return None
    return bs if isinstance(bs, int) and not isinstance(bs, bool) and 1 <= bs <= n else None


def _block_path(root: Path, b: int) -> Path:
    return root / f"block_{b:06d}.npy"


def _read_header(state_path: Path, overwrite: bool) -> dict | None:
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        if not isinstance(state, dict) or state.get("version") not in (1, _VERSION):
            raise ValueError("not a project_gradients ledger of a known version")
        if not isinstance(state["fingerprint"], str) or not isinstance(state["blocks"], dict):
            raise ValueError("fingerprint or blocks missing")
        return state
    except (OSError, ValueError, KeyError, TypeError) as e:
        if overwrite:
            return None
        raise ValueError(
            f"{state_path} cannot be read as a project_gradients ledger ({type(e).__name__}: {e}); pass "
            "overwrite=True to start afresh, or use another path."
        ) from None


def _recorded(ledgers: dict[int, dict]) -> dict[int, set[int]]:
    """``{block: checksums recorded for it by any process}``."""
    out: dict[int, set[int]] = {}
    for led in ledgers.values():
        for b, s in led.get("blocks", {}).items():
            try:
                out.setdefault(int(b), set()).add(int(s))
            except (TypeError, ValueError):
                continue
    return out


class _Store:
    """One process's view of the store: its share, its ledger, and the block function."""

    def __init__(self, root: Path, block: Callable, nb: int, bs: int, n: int, pi: int, pc: int):
        self.root, self.block, self.nb, self.bs, self.n, self.pi, self.pc = root, block, nb, bs, n, pi, pc
        self.ledger_path = _ledger_path(root, pi)
        self.ledger: dict = {}

    def rows(self, b: int) -> tuple[int, int]:
        return b * self.bs, min((b + 1) * self.bs, self.n)

    def load(self, b: int, sums: set[int] | None) -> np.ndarray | None:
        """Block ``b`` as stored, when it matches one of its recorded checksums."""
        if not sums:
            return None
        try:
            a = np.load(_block_path(self.root, b))
        except (OSError, ValueError, EOFError):
            return None
        lo, hi = self.rows(b)
        return a if a.shape[:1] == (hi - lo,) and crc(a) in sums else None

    def write(self, b: int, a: Any) -> np.ndarray:
        """Write block ``b`` atomically, then record it in this process's ledger (finite features only)."""
        a = finite_block(self.block, b, np.asarray(a), self.rows(b)[0])
        if a.dtype.kind == "V":  # bfloat16 (ml_dtypes): .npy files have no such type; stored exactly as float32
            a = a.astype(np.float32)
        atomic_npy(_block_path(self.root, b), a)
        self.ledger["blocks"][str(b)] = crc(a)
        atomic_json(self.ledger_path, self.ledger)
        return a

    def compute(self, todo: list[int]) -> None:
        """Blocks ``todo`` in order; block ``b + 1`` is dispatched to the device before block ``b`` is written."""
        pending = None
        for b in todo:
            out = self.block(b)
            if pending is not None:
                self.write(*pending)
            pending = (b, out)
        if pending is not None:
            self.write(*pending)

    def features(self, header: dict, recorded: dict[int, set[int]]) -> np.memmap | None:
        """``features.npy`` when the header says complete and every block's rows match a recorded checksum."""
        path = self.root / "features.npy"
        if not header.get("complete") or "shape" not in header or not path.exists():
            return None
        try:
            mm = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            mm = None
        ok = mm is not None and list(mm.shape) == header["shape"] and mm.dtype.str == header.get("dtype")
        ok = ok and all(crc(mm[slice(*self.rows(b))]) in recorded.get(b, ()) for b in range(self.nb))
        if not ok:
            warnings.warn(
                f"{path} does not match the checksums of its blocks (edited, damaged or replaced); reassembling it.",
                RuntimeWarning,
                stacklevel=4,
            )
        return mm if ok else None

    def assemble(self, recorded: dict[int, set[int]]) -> np.memmap:
        """Write ``features.npy`` from the blocks (one in memory at a time); a recorded block whose file does not
        match its checksum is recomputed (with a warning) and recorded in this process's ledger."""
        out, mm, redone = self.root / "features.npy", None, []
        tmp = tmp_name(out)
        try:
            for b in range(self.nb):
                a = self.load(b, recorded[b])
                if a is None:
                    redone.append(b)
                    a = self.write(b, self.block(b))
                if mm is None:
                    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=a.dtype, shape=(self.n,) + a.shape[1:])
                lo, hi = self.rows(b)
                mm[lo:hi] = a
            mm.flush()
            shape, dtype = list(mm.shape), mm.dtype.str
            del mm
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        if redone:
            warnings.warn(
                f"{len(redone)} stored block(s) of {self.root} ({redone[:8]}) do not match their checksums "
                "(edited or damaged); recomputed them.",
                RuntimeWarning,
                stacklevel=4,
            )
        head = _read_header(self.root / "state.json", True) or {}
        if self.pi == 0:
            head = self.ledger
        elif head.get("fingerprint") != self.ledger["fingerprint"]:
            return np.load(out, mmap_mode="r")
        head.update(complete=True, shape=shape, dtype=dtype)
        atomic_json(self.root / "state.json", head)
        return np.load(out, mmap_mode="r")


def features_to_disk(
    root: Path,
    block: Callable,
    nb: int,
    bs: int,
    n: int,
    apply_fn,
    params,
    x,
    projection,
    summed: bool,
    overwrite: bool,
    policy: str,
    process_index: Any,
    process_count: Any,
) -> np.memmap | None:
    """The features ``block(0), …, block(nb - 1)`` (``block(b)``: the ``(rows, ...)`` features of examples
    ``b·bs …``) in the store ``root`` (module docstring): this process's share computed or resumed, then
    ``features.npy`` assembled when every block is done; None (with a warning) while other shares are missing."""
    pi, pc, runtime = processes(process_index, process_count)
    fp, model_fp = _fingerprints(apply_fn, params, x, projection, summed, bs, policy)
    store = _Store(root, block, nb, bs, n, pi, pc)
    if read_only(root):  # an archived store: finished features of these inputs are read, verified; nothing written
        return _read_only_features(store, fp, model_fp, numeric_mode((params, x)))
    root.mkdir(parents=True, exist_ok=True)
    lock = DirLock(root)
    missing: list[int] = []
    try:
        with lock.held(DirLock.SETUP):
            header = _setup(root, lock, fp, model_fp, numeric_mode((params, x)), n, bs, overwrite)
            if not lock.acquire(DirLock.writer(pi), block=False):
                raise RuntimeError(
                    f"{root} is being written by another process with process_index={pi} (it holds "
                    f"{root / DirLock.writer(pi)}); wait for it to finish or give each process its own index."
                )
            ledgers = _ledgers(root, header)
            recorded = _recorded(ledgers)
        result = store.features(header, recorded)  # a complete store, reopened (read outside the setup lock)
        if result is None:
            share = range(pi, nb, pc)
            done = {b for b in share if store.load(b, recorded.get(b)) is not None}
            lost = [b for b in share if b in recorded and b not in done]
            if lost:
                warnings.warn(
                    f"{len(lost)} stored block(s) of {root} ({lost[:8]}) are missing or do not match their checksums "
                    "(edited or damaged); recomputing them.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            mine = ledgers.get(pi, dict(version=_VERSION, fingerprint=fp, model=model_fp, blocks={}))
            keep = {b: s for b, s in mine.get("blocks", {}).items() if int(b) not in share or int(b) in done}
            store.ledger = dict(header if pi == 0 else mine, version=_VERSION, blocks=keep)
            if len(done) < len(share):
                store.ledger.pop("complete", None)
            atomic_json(store.ledger_path, store.ledger)
            store.compute([b for b in share if b not in done])
        if runtime and pc > 1:  # every process reaches this once: its share is recorded, then all assemble
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxcompare.project_gradients:{fp[:16]}")
        if result is None:
            with lock.held(DirLock.SETUP):  # one assembler at a time; the next finds features.npy done
                header = _read_header(root / "state.json", True) or header
                header.setdefault("model", model_fp)
                recorded = _recorded(_ledgers(root, header))
                missing = [b for b in range(nb) if b not in recorded]
                if not missing:
                    with warnings.catch_warnings():  # assembled by another process just now: no "reassembling"
                        warnings.simplefilter("ignore", RuntimeWarning)
                        result = store.features(header, recorded)
                    if result is None:
                        result = store.assemble(recorded)
    finally:
        lock.close()
    if result is None:
        owners = sorted({b % pc for b in missing})
        warnings.warn(
            f"{len(missing)} of {nb} blocks of {root} are not written yet (the shares of process(es) {owners} of "
            f"{pc}, still running or stopped); features.npy is written by the process that finds every block done. "
            "Rerun the missing processes, or any process with process_count=1, to complete the features.",
            RuntimeWarning,
            stacklevel=3,
        )
    return result


def _read_only_features(store: _Store, fp: str, model_fp: str, mode: dict) -> np.memmap:
    """The assembled features of a read-only store, when they are those of these inputs and every block's rows
    match a recorded checksum; otherwise a ``PermissionError`` that says why they cannot be used."""
    root = store.root
    header = _read_header(root / "state.json", True)
    if header is None:
        raise read_only_refusal(root, "project_gradients", "it holds no project_gradients ledger (state.json)")
    if header["fingerprint"] != fp or header.get("model", model_fp) != model_fp:
        changed, note = mode_change(header, mode)
        why = (
            f"its features were computed in another numeric mode ({note}); restore that mode to read them"
            if changed
            else "its features are of other data, options, model or projection layout"
        )
        raise read_only_refusal(root, "project_gradients", why)
    if not header.get("complete"):
        raise read_only_refusal(root, "project_gradients", "its features are not finished (features.npy unassembled)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "reassembling": not here, the refusal says it
        mm = store.features(header, _recorded(_ledgers(root, header)))
    if mm is None:
        why = (
            "features.npy does not match the checksums of its blocks (edited or damaged)"
            if (root / "features.npy").exists()
            else "its ledger says finished but features.npy is missing"
        )
        raise read_only_refusal(root, "project_gradients", why)
    return mm


def _setup(root: Path, lock: DirLock, fp: str, model_fp: str, mode: dict, n: int, bs: int, overwrite: bool) -> dict:
    """Under the setup lock: the store's header, created afresh when missing or of other inputs (with
    ``overwrite``); refuses files of a store without a ledger (unless ``overwrite``); takes the shared store lock."""
    state_path = root / "state.json"
    remove_stale_tmp(root, _FILES, lock)
    header = _read_header(state_path, overwrite)
    if header is None and not overwrite:
        refuse_unledgered(root, _FILES, "project_gradients")
    if header is not None and header["fingerprint"] != fp:
        if not overwrite:
            changed, note = mode_change(header, mode)
            if changed:
                raise ValueError(
                    f"{root} holds features begun in another numeric mode ({note}); restore that mode to resume "
                    "them, use another path, or overwrite=True."
                )
            other = header.get("block_size"), header.get("n")
            hint = (
                f" It was begun with block_size={other[0]} (this call: {bs}): pass block_size={other[0]} to resume it."
                if other[1] == n and isinstance(other[0], int) and other[0] != bs
                else ""
            )
            raise ValueError(
                f"{root} holds features of other data, options, model or projection layout (fingerprint "
                f"mismatch{'; ' + note if note else ''}); use another path or overwrite=True.{hint}"
            )
        header = None
    busy = RuntimeError(
        f"{root} is being written by another process (project_gradients holds {root / DirLock.STORE}); wait "
        "for it to finish or use another path."
    )
    if header is None:
        if not lock.acquire(DirLock.STORE, block=False):  # discarding a store nobody writes
            raise busy
        try:
            for old in root.iterdir():
                if _FILES.fullmatch(old.name) and old.name != "state.json":
                    old.unlink(missing_ok=True)
            header = dict(version=_VERSION, fingerprint=fp, model=model_fp, n=n, block_size=bs, blocks={}, **mode)
            atomic_json(state_path, header)
        finally:
            lock.release(DirLock.STORE)
    if not lock.acquire(DirLock.STORE, shared=True, block=False):
        raise busy
    header.setdefault("model", model_fp)  # a version-1 header: its fingerprint includes the model's
    return header
