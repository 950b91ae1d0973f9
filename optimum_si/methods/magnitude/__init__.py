"""Magnitude pruning: the registered method and its score."""

from .method import Magnitude

__all__ = ["Magnitude"]
