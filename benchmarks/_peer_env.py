"""The benchmarks' own environments for the peers we measure against (neural-tangents, relplot, powerlaw...).

Each peer lives in ``benchmarks/.NAME-env``, a virtual environment built on first use from pinned requirements and
rebuilt when the pins change; never a dependency of the package and never committed (a ``.gitignore`` of ``*`` is
written inside it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["ensure_env", "torch_env", "TORCH_PINS"]

# one torch environment for the torch.func recipe (bench_ntk_models) and TRAK's projector (bench_ntk_projection)
TORCH_PINS = ["torch==2.14.1", "traker==0.3.2"]


def _base_python() -> str:
    """A Python outside any virtual environment when we run in one (a venv of a venv would inherit nothing)."""
    return sys.executable if sys.prefix == sys.base_prefix else "python3"


def ensure_env(env: Path, pins: list[str]) -> Path:
    """The interpreter of ``env`` with ``pins`` installed, building the environment if it is missing or stale."""
    py = env / "bin" / "python"
    stamp = env / ".pins"
    if py.exists() and stamp.exists() and stamp.read_text() == "\n".join(pins):
        return py
    print(f"building {env} with {' '.join(pins)} (once) ...", flush=True)
    subprocess.run([_base_python(), "-m", "venv", str(env)], check=True)
    (env / ".gitignore").write_text("*\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", *pins], check=True)
    stamp.write_text("\n".join(pins))
    return py


def torch_env() -> Path:
    """The interpreter of ``benchmarks/.trak-env`` (torch and traker, :data:`TORCH_PINS`), built on first use."""
    return ensure_env(Path(__file__).resolve().parent / ".trak-env", TORCH_PINS)
