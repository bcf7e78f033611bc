"""Sphinx configuration of the API reference (`make docs` → docs/api/_build/html/index.html). Offline: autodoc reads
the installed package's docstrings (Google style: Args/Returns/Example), no theme or extension from the network."""

project = "jaxcompare"
author = "The jaxcompare developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "imported-members": True, "undoc-members": False}
html_theme = "alabaster"
html_title = "jaxcompare API reference"
exclude_patterns = ["_build"]
# MathJax is loaded from a CDN only when a reader's browser is online; the pages read fine without it
