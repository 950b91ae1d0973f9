"""ALPS: the registered method, its knobs and its ADMM + PCG solver."""

from .config import ALPSConfig
from .method import ALPS

__all__ = ["ALPS", "ALPSConfig"]
