"""Wanda: the registered method and its score."""

from .method import Wanda

__all__ = ["Wanda"]
