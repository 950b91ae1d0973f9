"""Base pruners. Each method is one folder: its registered class (traits, config, glue) and its pure tensor math
side by side; `masks` is the mask selection they share, `registry` the names a recipe may use.

Imports: `fields`, and `observers` for types only. Torch-free at import (the command line looks methods up before
loading torch); the math modules import torch when a method runs.
"""

from __future__ import annotations

from .base import MethodConfig, Pattern, PruningMethod, Solved
from .registry import available_methods, get_method, register_method

__all__ = ["PruningMethod", "MethodConfig", "Pattern", "Solved", "register_method", "get_method", "available_methods"]
