"""The package version, and the versions that produced a recipe or checkpoint."""

from __future__ import annotations

__all__ = ["__version__", "version_stamp"]

__version__ = "0.2.0"


def version_stamp() -> dict[str, str]:
    """Versions of the libraries that produced a recipe or checkpoint (imports torch and transformers)."""
    import torch
    import transformers

    return {"optimum_si": __version__, "transformers": transformers.__version__, "torch": torch.__version__}
