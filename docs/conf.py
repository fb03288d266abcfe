"""Sphinx configuration for the trio-tls-dtls documentation."""

from __future__ import annotations

project = "trio-tls-dtls"
author = "trio-tls-dtls developers"
copyright = "2026, trio-tls-dtls developers"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Settings path fields are descriptors (trio_tls_dtls/core/path_fields.py):
# show the type they hold, as for the other fields; the docstrings say they
# accept str or os.PathLike.
autodoc_type_aliases = {"OptionalPathField": "pathlib.Path | None"}
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
