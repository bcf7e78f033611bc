"""One way to import an optional dependency: lazily, with an error that says what to install.

The core of the package imports with JAX, NumPy, SciPy and optax only; figures (matplotlib), model adapters (flax),
the built-in data (scikit-learn) and tables (pandas) are imported where they are used, through :func:`optional_import`.

Example:
  >>> from jaxcompare._optional import optional_import
  >>> optional_import("math", purpose="nothing").sqrt(4.0)
  2.0
  >>> optional_import("not_a_module_xyz", purpose="this example", pip="not-a-module")
  Traceback (most recent call last):
  ...
  ImportError: this example needs not_a_module_xyz: pip install not-a-module
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["optional_import", "DEMO"]

#: the extra that brings flax, scikit-learn, matplotlib and tqdm
DEMO = "'jaxcompare[demo]'"


def optional_import(module: str, *, purpose: str, pip: str = DEMO) -> ModuleType:
    """Import ``module`` (e.g. ``"matplotlib.pyplot"``), or raise an ``ImportError`` naming what needs it and the
    ``pip install`` argument that provides it.

    Args:
      module: the dotted module name.
      purpose: what needs it, for the message (``"plot_reliability"``).
      pip: what to install (default the ``[demo]`` extra).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise ImportError(f"{purpose} needs {top}: pip install {pip}") from e
