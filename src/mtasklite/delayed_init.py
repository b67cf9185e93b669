"""Upstream mtasklite's ``mtasklite.delayed_init`` import path: the package's own
:func:`~mtasklite.delayed_init` decorator and spec types, re-exported."""

from __future__ import annotations

from .stateful import DelayedInit, DelayedInitClass, delayed_init

__all__ = ["DelayedInit", "DelayedInitClass", "delayed_init"]
