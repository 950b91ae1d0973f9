"""What a run produces, as one validated, serialisable document: `SIConfig` (composing the method's, OWL's, Sparsity
Induction's and the reconstruction's configs), and `RunOptions`, how one machine runs it (never part of the recipe).

Imports: `fields`, `methods`, the torch-free config modules of `induction` and `planning`, `modeling.devices`,
`checkpoint.files`, `version`. Torch-free at import (the command line checks a recipe before loading torch).
"""

from __future__ import annotations

from ..induction.config import InductionConfig
from ..planning.config import OWLConfig
from ..reconstruction.config import ReconstructionConfig
from .config import CONFIG_NAME, FORMAT_VERSION, SIConfig, read_recipe
from .run_options import RunOptions

__all__ = ["SIConfig", "RunOptions", "InductionConfig", "OWLConfig", "ReconstructionConfig", "CONFIG_NAME",
           "FORMAT_VERSION", "read_recipe"]
