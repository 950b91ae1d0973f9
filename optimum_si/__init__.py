"""optimum-si: post-training pruning of LLMs with Sparsity Induction (arXiv 2602.21652)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["SIConfig", "SIPruner", "PruneReport", "PruningMethod", "register_method", "sparsity_report", "__version__"]

# Resolved on first access: importing the package (which the CLI does to check its arguments) must not import torch
# and transformers, which take seconds; only the objects that need them do.
_LAZY = {"SIConfig": "config", "SIPruner": "pruner", "PruneReport": "report", "sparsity_report": "sparsity",
         "PruningMethod": "methods", "register_method": "methods"}

if TYPE_CHECKING:
    from .config import SIConfig
    from .methods import PruningMethod, register_method
    from .pruner import SIPruner
    from .report import PruneReport
    from .sparsity import sparsity_report


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
