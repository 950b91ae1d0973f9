"""RIA: the registered method, its knobs and its score."""

from .config import RIAConfig
from .method import RIA

__all__ = ["RIA", "RIAConfig"]
