"""SparseGPT: the registered method, its knobs and its OBS solver."""

from .config import SparseGPTConfig
from .method import SparseGPT

__all__ = ["SparseGPT", "SparseGPTConfig"]
