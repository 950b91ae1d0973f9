"""Pruning methods as registered objects: traits the engine reads, and a score or a solve (see `base.py`).

Built in: magnitude, Wanda, SparseGPT. A new method is one file with a `PruningMethod` subclass decorated with
`register_method`; a user's own metric registers the same way from outside the package.
"""

from __future__ import annotations

from .base import PruningMethod, Solved
from .registry import available_methods, get_method, register_method

__all__ = ["PruningMethod", "Solved", "register_method", "get_method", "available_methods"]
