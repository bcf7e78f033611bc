"""jaxcompare.study: the main job (``jaxcompare demo`` / ``make demo``), one module per report section.

- :func:`run_study`: run the sections and write ``index.html`` + ``results.json``.
- :data:`SECTIONS`: the ``{name: Section}`` registry (``_registry.py``: adding a section is one entry there).
- :class:`Section`: a section's name, ``run(key, report, sizes, out_dir) -> dict`` and its quick/full sizes.
- :class:`Report`, :func:`to_jsonable`, :func:`render_text`: the self-contained HTML report (all text escaped).
"""

from ._registry import SECTIONS
from ._report import Report, render_text, to_jsonable
from ._run import run_study
from ._section import Section

__all__ = ["run_study", "SECTIONS", "Section", "Report", "to_jsonable", "render_text"]
