"""optimum-si: post-training pruning of LLMs with Sparsity Induction (arXiv 2602.21652)."""

__version__ = "0.1.0"

from .config import SIConfig  # noqa: E402
from .pruner import SIPruner  # noqa: E402
from .report import PruneReport  # noqa: E402
from .sparsity import sparsity_report  # noqa: E402

__all__ = ["SIConfig", "SIPruner", "PruneReport", "sparsity_report", "__version__"]
