"""Multi-process and out-of-core kernels (issue 16): ``kernel_to_disk`` on a shared path by 2 processes under
``jax.distributed`` (gloo, 1 CPU device each), and one-process ``kernel_to_disk`` throughput against the same kernel
in memory with ``batched``.

    python benchmarks/bench_ntk_distributed.py                      # both parts, defaults below
    python benchmarks/bench_ntk_distributed.py --part shared --n 8192 --block 1024
    python benchmarks/bench_ntk_distributed.py --part throughput --n 4096 --block 1024

Model: the MLP 784-``width``-``width``-10 of bench_ntk_models (weights only; default width 512 as in bench_ntk),
trNTK (normalized, structured), float32, inputs standard normal. Part ``shared``: 2 processes (this script with
``--worker``) compute the kernel into one directory; each prints its tiles (≤ 55% each is the goal) and time; then one
process computes the same kernel into another directory and the two files are compared bit for bit. Part
``throughput``: kernel entries per second of ``kernel_to_disk`` (norms, tiles, writes, ledgers) vs
``batched(kernel, block)`` in memory (goal ≥ 0.8×), each after a warm-up call at a small size compiles the tile
function. The machine's 1-minute load is printed beside the timings (the 2-core machine is shared: timings are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _setup(n: int, width: int):
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(HERE))
    import bench_ntk_models as models

    import jaxcompare as jc

    params = [{"w": jnp.asarray(layer["w"])} for layer in models.mlp_init(0, (784, width, width, 10))]
    x = jnp.asarray(models.inputs("mlp", n))
    return jc, np, jc.trace_ntk(models.mlp_apply), params, x


def worker(pid: int, port: str, path: str, n: int, block: int, width: int) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    jc, np, k, params, x = _setup(n, width)
    t0 = time.perf_counter()
    jc.kernel_to_disk(k, params, x, path=path, block_size=block, progress_bar=False)
    dt = time.perf_counter() - t0
    ledger = Path(path) / ("state.json" if pid == 0 else f"state.{pid}.json")
    tiles = len(json.loads(ledger.read_text())["done"])
    print(json.dumps(dict(process=pid, tiles=tiles, seconds=round(dt, 1))), flush=True)


def part_shared(n: int, block: int, width: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench16-"))
    try:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = str(s.getsockname()[1])
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAXCOMPARE_PROGRESS="0")
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--port",
            port,
            "--path",
            str(root / "shared"),
            "--n",
            str(n),
            "--block",
            str(block),
            "--width",
            str(width),
        ]
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(cmd + ["--pid", str(i)], env=env, stdout=subprocess.PIPE, text=True) for i in range(2)
        ]
        outs = [json.loads(p.communicate(timeout=1800)[0].strip().splitlines()[-1]) for p in procs]
        wall2 = time.perf_counter() - t0
        nb = -(-n // block)
        total = nb * (nb + 1) // 2
        load2 = _load()
        jc, np, k, params, x = _setup(n, width)
        t0 = time.perf_counter()
        one = jc.kernel_to_disk(k, params, x, path=root / "one", block_size=block, progress_bar=False)
        wall1 = time.perf_counter() - t0
        same = bool(np.array_equal(np.load(root / "shared" / "kernel.npy", mmap_mode="r"), one))
        print(
            f"\n## shared path: 2 processes x 1 CPU device, N = {n}, block {block}, MLP 784-{width}-{width}-10 "
            f"trNTK, {total} tiles"
        )
        print("| run | tiles | share | seconds | load |\n|---|---|---|---|---|")
        for o in outs:
            print(
                f"| process {o['process']} of 2 | {o['tiles']} | {o['tiles'] / total:.1%} | {o['seconds']} | {load2} |"
            )
        print(f"| 2 processes, wall (incl. start-up) | {total} | 100% | {wall2:.1f} | {load2} |")
        print(f"| 1 process | {total} | 100% | {wall1:.1f} | {_load()} |")
        print(f"\nbit-identical to one process: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def part_throughput(n: int, block: int, width: int, repeat: int) -> None:
    jc, np, k, params, x = _setup(n, width)
    root = Path(tempfile.mkdtemp(prefix="bench16-"))
    try:
        b = jc.batched(k, block, progress_bar=False)
        # warm-up: compile both tile programs (same tile shapes)
        b(params, x[: 2 * block]).block_until_ready()
        jc.kernel_to_disk(k, params, x[: 2 * block], path=root / "warm", block_size=block, progress_bar=False)
        rows = []
        for r in range(repeat):
            t0 = time.perf_counter()
            b(params, x).block_until_ready()
            tb = time.perf_counter() - t0
            t0 = time.perf_counter()
            jc.kernel_to_disk(k, params, x, path=root / f"disk{r}", block_size=block, progress_bar=False)
            td = time.perf_counter() - t0
            rows.append((tb, td, _load()))
            shutil.rmtree(root / f"disk{r}", ignore_errors=True)
        print(
            f"\n## one process: kernel_to_disk vs batched in memory, N = {n}, block {block}, "
            f"MLP 784-{width}-{width}-10 trNTK (float32)"
        )
        print("| repeat | batched s | batched M entries/s | to disk s | to disk M entries/s | disk / memory | load |")
        print("|---|---|---|---|---|---|---|")
        for r, (tb, td, load) in enumerate(rows):
            print(
                f"| {r} | {tb:.1f} | {n * n / tb / 1e6:.2f} | {td:.1f} | {n * n / td / 1e6:.2f} | {tb / td:.2f} | "
                f"{load} |"
            )
        tb, td = min(r[0] for r in rows), min(r[1] for r in rows)
        print(f"\nbest of {repeat}: kernel_to_disk / batched throughput = {tb / td:.2f} (goal >= 0.8)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("shared", "throughput", "all"), default="all")
    ap.add_argument("--n", type=int, default=None, help="points (default: 8192 shared, 3072 throughput)")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--width", type=int, default=512, help="hidden width of the MLP (bench_ntk's: 512)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pid", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", default="", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.pid, a.port, a.path, a.n, a.block, a.width)
        return
    print(f"# bench_ntk_distributed ({time.strftime('%Y-%m-%d %H:%M')}), load {_load()} on {os.cpu_count()} cores")
    if a.part in ("shared", "all"):
        part_shared(a.n or 8192, a.block, a.width)
    if a.part in ("throughput", "all"):
        part_throughput(a.n or 4096, a.block, a.width, a.repeat)


if __name__ == "__main__":
    main()
