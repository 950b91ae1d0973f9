"""`PruneReport`: what a run did, per Linear and per block (feeds `si_report.json` and the model card)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LayerRecord", "BlockRecord", "PruneReport", "REPORT_NAME"]

REPORT_NAME = "si_report.json"


@dataclass
class LayerRecord:
    name: str
    numel: int
    zeros: int
    # SparseGPT's OBS error estimate; for mask-only methods the squared-error proxy sum((W - W_pruned)^2 * ||x||^2).
    error: float | None = None

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel


@dataclass
class BlockRecord:
    index: int
    seconds: float
    stats_seconds: float = 0.0
    prune_seconds: float = 0.0
    propagate_seconds: float = 0.0
    induction: dict[str, Any] | None = None


@dataclass
class PruneReport:
    method: str
    mask_structure: str
    target_sparsity: float
    layers: dict[str, LayerRecord] = field(default_factory=dict)
    blocks: list[BlockRecord] = field(default_factory=list)
    capture_seconds: float = 0.0
    total_seconds: float = 0.0
    num_samples: int = 0
    seqlen: int = 0
    perplexity: dict[str, float] = field(default_factory=dict)
    # Where named / Hub calibration text came from (optimum_si.calibration_sets); None for data passed directly.
    calibration: dict[str, Any] | None = None
    # Per model ("pruned", and "dense" when measured): perplexity on named sets {"wikitext2": 9.9, ...} and
    # lm-evaluation-harness scores {"boolq": {"acc": 0.7, ...}, ...}; filled by `add_results`.
    dataset_perplexity: dict[str, dict[str, float]] = field(default_factory=dict)
    zero_shot: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    evaluation_seqlen: int | None = None

    def add_results(self, results: dict[str, Any], model: str = "pruned") -> None:
        """Record `{"perplexity": {set: value}, "zero_shot": {task: {metric: value}}, "seqlen": n}` for `model`."""
        unknown = set(results) - {"perplexity", "zero_shot", "seqlen"}
        if unknown:
            raise ValueError(f"Unknown result keys {sorted(unknown)}; use 'perplexity', 'zero_shot' and 'seqlen'.")
        if results.get("perplexity"):
            self.dataset_perplexity.setdefault(model, {}).update(results["perplexity"])
        if results.get("zero_shot"):
            self.zero_shot.setdefault(model, {}).update(results["zero_shot"])
        if results.get("seqlen"):
            self.evaluation_seqlen = int(results["seqlen"])

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over all pruned Linears."""
        numel = sum(r.numel for r in self.layers.values())
        return sum(r.zeros for r in self.layers.values()) / numel if numel else 0.0

    def induction_summary(self) -> dict[str, Any] | None:
        """Sparsity Induction at a glance: blocks kept, and the block losses on the held-out calibration windows
        (never trained on) without and with the learned scales, per block and summed; None without induction."""
        records = [(b.index, b.induction) for b in self.blocks if b.induction and "kept" in b.induction]
        if not records:
            return None
        per_block = [{"block": index, "kept": info["kept"], "base": info.get("validation_loss_base"),
                      "induced": info.get("validation_loss_induced")} for index, info in records]
        validated = [b for b in per_block if b["base"] is not None and b["induced"] is not None]
        summary: dict[str, Any] = {"blocks": len(records), "blocks_kept": sum(1 for b in per_block if b["kept"]),
                                   "validated": bool(validated)}
        if validated:
            summary["validation_loss_base"] = sum(b["base"] for b in validated)
            # What ships: the induced weights where a block kept them, the base pruner's where it reverted.
            summary["validation_loss_induced"] = sum(b["induced"] if b["kept"] else b["base"] for b in validated)
            summary["per_block"] = validated
        return summary

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["induction_summary"] = self.induction_summary()
        data["layers"] = {name: {**asdict(r), "sparsity": r.sparsity} for name, r in self.layers.items()}
        data["sparsity"] = self.sparsity
        return data

    def save(self, save_directory: str | os.PathLike) -> str:
        path = os.path.join(save_directory, REPORT_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
        return path

    def summary(self) -> str:
        return (
            f"{self.method} {self.mask_structure}: {len(self.layers)} Linears, achieved sparsity {self.sparsity:.4f} "
            f"(target {self.target_sparsity:.4f}) in {self.total_seconds:.1f} s"
        )
