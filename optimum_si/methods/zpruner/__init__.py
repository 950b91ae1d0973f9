"""Z-Pruner: the registered method, its knobs and its score."""

from .config import ZPrunerConfig
from .method import ZPruner

__all__ = ["ZPruner", "ZPrunerConfig"]
