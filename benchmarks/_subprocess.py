"""One benchmark configuration per subprocess, so that its peak RSS is that configuration's alone.

The parent calls :func:`run_child` with the child's command line; the child computes its row and ends with
:func:`emit`, one ``RESULT {json}`` line on stdout. The parent reads the child's peak RSS from the kernel
(``os.wait4``), so a child killed for memory still reports how far it got. Standard library only: the children may
run under another interpreter (the peers' environments of :mod:`_peer_env`).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import tempfile
import time

__all__ = ["child_env", "emit", "peak_rss_gib", "run_child"]

_PREFIX = "RESULT "


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def emit(result: dict) -> None:
    """The child's last word: ``result`` as one ``RESULT`` line (with its peak RSS when it did not set one)."""
    print(_PREFIX + json.dumps({"rss_gib": peak_rss_gib(), **result}), flush=True)


def child_env(device: str = "cpu", budget: str | None = None, **extra: str) -> dict:
    """Environment of a jaxcompare child: no progress bars, the memory budget, the JAX platform of ``device``."""
    env = {**os.environ, "JAXCOMPARE_PROGRESS": "0", "JAX_PLATFORMS": "cuda" if device == "gpu" else "cpu", **extra}
    if budget is not None:
        env["JAXCOMPARE_MEMORY_BUDGET"] = budget
    return env


def run_child(cmd: list[str], *, env: dict, timeout: float) -> dict | str:
    """Run ``cmd`` (a child that ends with :func:`emit`) and return its result with ``rss_gib`` (the child's peak
    RSS as the kernel measured it), or a one-line reason when it gave none (timeout, signal, exit code + the tail of
    its stderr). The child runs in its own process group, killed as a whole on timeout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        status, usage = 0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                return f"over {timeout:.0f} s (peak RSS {usage.ru_maxrss / 1024**2:.2f} GiB when stopped)"
            time.sleep(0.2)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        rss = usage.ru_maxrss / 1024**2
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    line = [ln for ln in stdout.splitlines() if ln.startswith(_PREFIX)]
    if line:
        return {**json.loads(line[-1][len(_PREFIX) :]), "rss_gib": rss}
    if code < 0:
        why = f"killed by signal {-code}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
        return f"{why} at peak RSS {rss:.2f} GiB"
    tail = (stderr or stdout)[-600:].strip().replace("\n", " | ")
    return f"failed (exit {code}, peak RSS {rss:.2f} GiB): {tail}"


def floor_seconds(name, fl: dict, peak: float) -> dict:
    """Seconds at the matmul ``peak`` (FLOP/s) of the FLOP counts ``fl`` (``passes``, ``layer_grads``, ``gram``):
    ``{"exact": all three, "proj": without the Gram}``, printed on one line for the configuration ``name``."""
    out = {
        "exact": (fl["passes"] + fl["layer_grads"] + fl["gram"]) / peak,
        "proj": (fl["passes"] + fl["layer_grads"]) / peak,
    }
    print(
        f"  floors {name}: passes {fl['passes']:.2e}, layer gradients {fl['layer_grads']:.2e}, Gram "
        f"{fl['gram']:.2e} FLOPs -> exact {out['exact']:.2f} s, projected {out['proj']:.2f} s at the matmul peak",
        flush=True,
    )
    return out
