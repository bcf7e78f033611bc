"""Memory policy of the NTK family: the budget a call may use and estimates of what a computation needs.

Budget (bytes): ``memory_budget=`` where a function takes it, else the environment variable
``JAXCOMPARE_MEMORY_BUDGET`` (bytes, or a suffix ``K``/``M``/``G``/``GiB``, or a fraction of the available memory
such as ``0.25``), else half of the available memory. A value without a unit is a fraction when it is in (0, 1]
(``1``, ``"1"`` and ``1.0`` alike: all of the available memory) and a whole number of bytes above 1 (``1.5``
without a unit is refused as ambiguous). The available memory is the default device's: on a GPU or
TPU the memory its allocator may still take (``bytes_limit − bytes_in_use`` of ``Device.memory_stats()``; the
kernels' arrays live there), on a CPU what the operating system reports as available (``MemAvailable`` of
``/proc/meminfo``; ``os.sysconf`` pages elsewhere; 4 GiB when neither is known). Estimates are made from shapes
before any work; a computation that does not fit plans its own blocks or raises with the estimate and a block size
that fits — never an out-of-memory kill. Not bounded by the budget: the compiler's own working memory while a
model's programs are compiled on its first call (peak RSS grew 119–172 MiB under a 50 MB budget for a small CNN
and a transformer; what the compiled programs keep is measured and charged from then on), and XLA's temporaries
inside the ``"jacobian"`` implementation's tiles (a transformer under a 30 MB budget: +99 MiB). Audit of
2026-12-01.
"""

from __future__ import annotations

import math
import os
import re

__all__ = ["available_bytes", "memory_budget", "format_bytes"]

_DEFAULT_FRACTION = 0.5
_FALLBACK = 4 * 1024**3
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}


def accelerator_bytes(free: bool = True) -> int | None:
    """Memory of JAX's default device when it is an accelerator: what its allocator may still take
    (``bytes_limit − bytes_in_use``) or, with ``free=False``, its limit; None on a CPU or when the backend reports
    no memory statistics."""
    import jax

    if jax.default_backend() == "cpu":
        return None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # a backend without statistics (some plugins raise instead of returning None)
        return None
    if not stats or not stats.get("bytes_limit"):
        return None
    limit = int(stats["bytes_limit"])
    return max(limit - int(stats.get("bytes_in_use", 0)), 0) if free else limit


def available_bytes() -> int:
    """Memory available to new allocations: the accelerator's (:func:`accelerator_bytes`) when JAX's default device
    is one, else the host's (``MemAvailable``), or total physical memory, or 4 GiB if unknown."""
    dev = accelerator_bytes()
    if dev is not None:
        return dev
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return _FALLBACK


def _parse(text: str, what: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _UNITS:
        raise ValueError(
            f"{what} must be a number of bytes (optionally with a unit K/M/G/GiB) or a fraction of the "
            f"available memory in (0, 1]; got {text!r}."
        )
    v = float(m.group(1))
    if not m.group(2):
        return _unitless(v, text, what)
    v *= _UNITS[m.group(2).lower()]
    if not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number of bytes, got {text!r}.")
    if v < 1:
        raise ValueError(f"{what} must be positive, got {text!r}.")
    return int(v)


def _unitless(v: float, given: object, what: str) -> int:
    """A budget without a unit: a fraction of the available memory in (0, 1], else a whole number of bytes."""
    if not math.isfinite(v) or not v > 0:
        raise ValueError(f"{what} must be a positive, finite number of bytes or a fraction in (0, 1], got {given!r}.")
    if v <= 1:
        return int(v * available_bytes())
    if v != int(v):
        raise ValueError(
            f"{what} without a unit is a fraction of the available memory in (0, 1] or a whole number of bytes, got "
            f'{given!r}: write e.g. 0.5 for half, or give a unit ("1.5G").'
        )
    return int(v)


def memory_budget(budget: int | float | str | None = None) -> int:
    """The memory budget in bytes (see module docstring): ``budget`` if given (bytes, a string with a unit, or a
    fraction in (0, 1] of the available memory), else ``JAXCOMPARE_MEMORY_BUDGET``, else half the available memory.

    Example:
      >>> from jaxcompare.ntk._memory import memory_budget
      >>> memory_budget("512M")
      536870912
      >>> memory_budget(2**30)
      1073741824
    """
    if budget is None:
        env = os.environ.get("JAXCOMPARE_MEMORY_BUDGET")
        if env:
            return _parse(env, "JAXCOMPARE_MEMORY_BUDGET")
        return int(_DEFAULT_FRACTION * available_bytes())
    if isinstance(budget, bool):
        raise TypeError(f"memory_budget must be a number of bytes or a string, got {budget!r}.")
    if isinstance(budget, (int, float)):
        return _unitless(float(budget), budget, "memory_budget")
    return _parse(budget, "memory_budget")


def total_bytes() -> int:
    """The accelerator's memory limit when JAX's default device is one, else physical memory (``MemTotal``), or
    4 GiB if unknown: a machine constant, unlike :func:`available_bytes`."""
    dev = accelerator_bytes(free=False)
    if dev is not None:
        return dev
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return _FALLBACK


def planning_budget() -> int:
    """The budget that choices baked into a traced program use: ``JAXCOMPARE_MEMORY_BUDGET`` if set, else half the
    physical memory (of the accelerator, on one). Unlike :func:`memory_budget` it does not move with the machine's
    load, so the same call traces the same program (the on-disk fingerprint of a kernel depends on it)."""
    env = os.environ.get("JAXCOMPARE_MEMORY_BUDGET")
    if env:
        return _parse(env, "JAXCOMPARE_MEMORY_BUDGET")
    return int(_DEFAULT_FRACTION * total_bytes())


def format_bytes(n: float) -> str:
    """``1.5 GiB``-style text."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def kernel_bytes(apply_fn, params, x1, x2, n_classes: int, impl_name: str, mode: str) -> tuple[int, int]:
    """``(per_example, fixed)`` estimated bytes of an exact gradient kernel from shapes only: ``per_example`` grows
    with the number of points held at once (per-example gradients, layer factors, activations kept for the
    backward passes), ``fixed`` is the output (and, for the structured path, one chunk of the factor computation
    and one tile's intermediates). ``(0, out)`` for implementations whose memory does not grow with N."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    itemsize = max(4, jnp.dtype(jax.eval_shape(apply_fn, params, x1[:1]).dtype).itemsize)
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    c = 1 if mode == "pseudo" else n_classes
    out = x1.shape[0] * n2 * (n_classes * n_classes if mode == "full" else 1) * itemsize
    n_par = int(sum(np.prod(jnp.shape(l), dtype=np.int64) for l in jax.tree_util.tree_leaves(params)))
    if impl_name == "jacobian":
        # the Jacobian rows and, while they are formed, every intermediate of the model: its value and one cotangent
        # per class (vmap over the classes' backward passes; measured: the Jacobian alone left a transformer 5×
        # over its budget)
        from ._projection import _intermediate_elements

        act = _intermediate_elements(apply_fn, params, x1)
        return (c * n_par + (c + 1) * act) * itemsize, out
    if impl_name != "structured":
        return 0, out
    from ._structured._blocks import estimate

    # the structured path keeps compact per-layer features of every point (see _structured/_blocks.py), plus one
    # chunk of the factor computation and one tile's intermediates
    return estimate(apply_fn, params, x1, x2, mode)


def resident_bytes() -> int | None:
    """This process's resident memory now (``/proc/self/statm``), or None where it cannot be read: the engine
    measures what compiling its programs added before it decides how many blocks of features to keep."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


_TRIM: list = []


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``; nothing elsewhere). The CPU runtime's
    freed buffers and the compiler's scratch otherwise stay resident: a second kernel call then starts ~1 GiB
    higher and the process outgrows its budget although nothing is in use (measured on a ViT)."""
    if not _TRIM:
        fn = None
        try:
            import ctypes

            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _TRIM.append(fn)
    if _TRIM[0] is not None:
        _TRIM[0](0)
