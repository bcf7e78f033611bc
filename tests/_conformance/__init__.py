"""The API conformance registry: one :class:`Case` per public function (``tests/test_conformance.py`` derives the
checks), and :data:`EXCLUDED`, the public names that are not functions of arrays, each with its reason."""

from ._excluded import EXCLUDED
from ._models import CASES as _MODELS
from ._numeric import CASES as _NUMERIC
from ._spec import Arg, Case
from ._workflows import CASES as _WORKFLOWS

CASES = _NUMERIC + _MODELS + _WORKFLOWS

__all__ = ["CASES", "EXCLUDED", "Arg", "Case"]
