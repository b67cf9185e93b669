"""Upstream mtasklite's ``mtasklite.version`` import path: the package's ``__version__``."""

from __future__ import annotations

from . import __version__

__all__ = ["__version__"]
