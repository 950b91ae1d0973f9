"""The names of the files optimum-si writes into (or beside) a checkpoint folder."""

from __future__ import annotations

__all__ = ["CONFIG_NAME", "REPORT_NAME", "CARD_NAME", "MANIFEST_NAME", "PROGRESS_NAME", "INDEX_NAME", "OUTPUT_ERROR_PLOT",
           "SPARSITY_PLOT", "PLOT_FILES"]

CONFIG_NAME = "si_config.json"  # the recipe (its presence marks a complete checkpoint of an older release)
REPORT_NAME = "si_report.json"  # what the run did, per layer and per block
CARD_NAME = "README.md"  # the model card
MANIFEST_NAME = ".optimum-si-manifest.json"  # the checkpoint's own files, written last
PROGRESS_NAME = ".optimum-si-progress.json"  # a streamed run's finished blocks, while it runs
INDEX_NAME = "model.safetensors.index.json"
# Charts of a run (see optimum_si.reporting.plots). The last one was drawn by earlier versions (importance
# histograms before/after SI): still listed so that a re-save removes it.
OUTPUT_ERROR_PLOT = "output_error_per_block.png"
SPARSITY_PLOT = "sparsity_per_layer.png"
PLOT_FILES = (OUTPUT_ERROR_PLOT, SPARSITY_PLOT, "importance_histograms.png")
