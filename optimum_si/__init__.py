"""optimum-si: post-training pruning of LLMs with Sparsity Induction (arXiv 2602.21652).

The public surface is small: a recipe (`SIConfig`, with `InductionConfig`, `OWLConfig` and `ReconstructionConfig` for
its stages), run options
(`RunOptions`), the pruner (`SIPruner`), its report (`PruneReport`), the method plug-in point (`PruningMethod`,
`register_method`) and `sparsity_report`. Everything else is importable by module path (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["SIConfig", "InductionConfig", "OWLConfig", "ReconstructionConfig", "RunOptions", "SIPruner", "PruneReport", "PruningMethod",
           "register_method", "sparsity_report", "__version__"]

# Resolved on first access: importing the package (which the CLI does to check its arguments) must not import torch
# and transformers, which take seconds; only the objects that need them do.
_LAZY = {"SIConfig": "recipe", "InductionConfig": "recipe", "OWLConfig": "recipe", "ReconstructionConfig": "recipe",
         "RunOptions": "recipe",
         "SIPruner": "pruner", "PruneReport": "reporting.report", "sparsity_report": "sparsity",
         "PruningMethod": "methods", "register_method": "methods"}

if TYPE_CHECKING:
    from .methods import PruningMethod, register_method
    from .pruner import SIPruner
    from .recipe import InductionConfig, OWLConfig, ReconstructionConfig, RunOptions, SIConfig
    from .reporting.report import PruneReport
    from .sparsity import sparsity_report


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
