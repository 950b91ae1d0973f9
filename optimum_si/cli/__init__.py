"""The `optimum-si` command line (`prune`, `eval`, `report`), also `optimum-cli si ...`. Imports everything above it;
torch only once a command runs (every argument is checked first)."""

from __future__ import annotations

from .main import main
from .parser import build_parser

__all__ = ["main", "build_parser"]
