"""The sections of the main job, in report order: the one place a section is added.

To add a section: write ``jaxcompare/study/_<name>.py`` defining a :class:`Section` (its ``run`` and sizes), and add
it to the tuple below. Append at the end: a section's key is ``fold_in(key, position)``, so appending keeps every
other section's numbers for the same seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ._architectures import ARCHITECTURES_SECTION
from ._ensembles import ENSEMBLES
from ._lwr import LWR
from ._microscope import MICROSCOPE
from ._recipes import RECIPES_SECTION
from ._section import Section
from ._surrogates import SURROGATES

__all__ = ["SECTIONS"]

#: name → :class:`Section`, read-only, in report order
SECTIONS: Mapping[str, Section] = MappingProxyType(
    {s.name: s for s in (ENSEMBLES, SURROGATES, LWR, MICROSCOPE, ARCHITECTURES_SECTION, RECIPES_SECTION)}
)
