"""`PruneReport`: what a run did, per Linear and per block (feeds `si_report.json` and the model card)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..checkpoint.files import REPORT_NAME

__all__ = ["LayerRecord", "BlockRecord", "BlockInduction", "BlockReconstruction", "PruneReport", "REPORT_NAME"]



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
class BlockInduction(Mapping):
    """What Sparsity Induction did to one block (optimum_si.induction.inducer.BlockInducer fills it; induce-only runs set
    only `scale_spread` and `seconds`). Typed, and still read like the dict it replaced (`record["kept"]`,
    `record.get(...)`, `"kept" in record`): fields left None count as absent, as in the JSON of si_report.json."""

    loss_before: float | None = None  # block loss on the judged windows with the base pruner's weights
    loss_after: float | None = None  # the same with the learned scales folded in
    kept: bool | None = None  # the verdict: scales kept (True) or the block reverted to the base pruner
    seconds: float | None = None
    refresh_seconds: float | None = None
    steps: int | None = None
    mask_changes: int | None = None
    importance_histogram: dict[str, list] | None = None
    # Block loss on the held-out calibration windows (never trained on), without and with the learned scales.
    validation_loss_base: float | None = None
    validation_loss_induced: float | None = None
    # The same block losses as relative output errors sqrt(loss / mean(target^2)) on the judged windows: the base
    # pruner's block alone, and with the learned scales (whether or not the block kept them).
    relative_error_base: float | None = None
    relative_error_induced: float | None = None
    # Spread (max / min) of each distribution-level scale folded into the block, by scaling group.
    scale_spread: dict[str, float] | None = None

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in _INDUCTION_FIELDS else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in _INDUCTION_FIELDS if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set (the JSON form)."""
        return {name: getattr(self, name) for name in self}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockInduction:
        """From si_report.json (or an older report's dict); keys of newer versions are ignored."""
        return cls(**{key: value for key, value in data.items() if key in _INDUCTION_FIELDS})


_INDUCTION_FIELDS = tuple(f.name for f in fields(BlockInduction))


@dataclass
class BlockReconstruction:
    """What the reconstruction of the kept weights did to one block (optimum_si.reconstruction.stage fills it)."""

    mode: str = "gradient"  # "gradient" or "closed-form"
    loss_before: float | None = None  # block loss on the judged windows before the refit
    loss_after: float | None = None  # the same with the refit weights (None when the refit failed)
    kept: bool = False  # the verdict: refit kept, or the block left as the earlier stages left it
    validated: bool = False  # judged on held-out windows the refit never saw (else on training windows)
    steps: int | None = None  # training steps, every tried learning rate together
    seconds: float | None = None
    lr: float | None = None  # gradient: the learning rate of the kept refit
    retried: bool = False  # the kept refit is the retry at `retry_lr` (the first one was reverted)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockReconstruction:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass
class BlockRecord:
    index: int
    seconds: float
    stats_seconds: float = 0.0
    prune_seconds: float = 0.0
    propagate_seconds: float = 0.0
    induction: BlockInduction | None = None
    # ||block_out_pruned - block_out_dense|| / ||block_out_dense|| on a few calibration windows, both blocks fed the
    # same inputs (optimum_si.observers.output_error); None for data-free runs.
    output_error: float | None = None
    reconstruction: BlockReconstruction | None = None

    def __post_init__(self) -> None:
        if isinstance(self.induction, Mapping) and not isinstance(self.induction, BlockInduction):
            self.induction = BlockInduction.from_dict(self.induction)  # read back from si_report.json
        if isinstance(self.reconstruction, Mapping):
            self.reconstruction = BlockReconstruction.from_dict(self.reconstruction)


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
    # Where named / Hub calibration text came from (optimum_si.data.named_sets); None for data passed directly.
    calibration: dict[str, Any] | None = None
    # Per model ("pruned", and "dense" when measured): perplexity on named sets {"wikitext2": 9.9, ...} and
    # lm-evaluation-harness scores {"boolq": {"acc": 0.7, ...}, ...}; filled by `add_results`.
    dataset_perplexity: dict[str, dict[str, float]] = field(default_factory=dict)
    zero_shot: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    evaluation_seqlen: int | None = None
    # Weight-bearing parameters inside the blocks left dense on purpose (full name -> why: router, ignore pattern,
    # not in targets), and layers pruned without their own calibration data (an expert no token was routed to).
    skipped: dict[str, str] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)

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

    def output_error_summary(self) -> dict[str, Any] | None:
        """The relative output error of the blocks as saved: mean over the blocks that have one, the worst block,
        and, after Sparsity Induction, the mean of the base pruner alone and with SI on the induction's judged
        windows (reverted blocks count with the base pruner's error); None when no block recorded one."""
        errors = [(b.index, b.output_error) for b in self.blocks if b.output_error is not None]
        if not errors:
            return None
        worst = max(errors, key=lambda item: item[1])
        summary: dict[str, Any] = {"blocks": len(errors), "mean": sum(e for _, e in errors) / len(errors),
                                   "max": worst[1], "max_block": worst[0]}
        pairs = [(info["relative_error_base"], info["relative_error_induced"] if info.get("kept") else
                  info["relative_error_base"]) for b in self.blocks if (info := b.induction)
                 and info.get("relative_error_base") is not None and info.get("relative_error_induced") is not None]
        if pairs:
            summary["base_mean"] = sum(base for base, _ in pairs) / len(pairs)
            summary["induced_mean"] = sum(induced for _, induced in pairs) / len(pairs)
        return summary

    def reconstruction_summary(self) -> dict[str, Any] | None:
        """The reconstruction of the kept weights at a glance: blocks refit and kept, and the judged block losses
        before and as shipped, per block and summed; None without reconstruction."""
        records = [(b.index, b.reconstruction) for b in self.blocks if b.reconstruction is not None]
        if not records:
            return None
        per_block = [{"block": index, "kept": r.kept, "retried": r.kept and r.retried, "before": r.loss_before,
                      "after": r.loss_after if r.kept else r.loss_before} for index, r in records]
        judged = [b for b in per_block if b["before"] is not None and b["after"] is not None]
        return {"blocks": len(records), "blocks_kept": sum(1 for b in per_block if b["kept"]),
                "blocks_kept_at_retry": sum(1 for b in per_block if b["retried"]),
                "mode": records[0][1].mode, "validated": all(r.validated for _, r in records),
                "loss_before": sum(b["before"] for b in judged), "loss_after": sum(b["after"] for b in judged),
                "per_block": per_block}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for block, record in zip(data["blocks"], self.blocks):  # only the fields SI set, as before it was typed
            block["induction"] = record.induction.as_dict() if record.induction is not None else None
        data["induction_summary"] = self.induction_summary()
        data["reconstruction_summary"] = self.reconstruction_summary()
        data["output_error_summary"] = self.output_error_summary()
        data["layers"] = {name: {**asdict(r), "sparsity": r.sparsity} for name, r in self.layers.items()}
        data["sparsity"] = self.sparsity
        return data

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PruneReport:
        """The report saved in `folder/si_report.json` (derived entries such as summaries are recomputed; keys of
        newer versions are ignored). OSError / ValueError when the file is missing or is not a report."""
        path = os.path.join(os.fspath(folder), REPORT_NAME)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); the file is truncated or corrupted.") from None
        if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
            raise ValueError(f"{path} is not a {REPORT_NAME} (no `layers` table).")
        try:
            report = cls(**{k: v for k, v in _known(cls, data).items() if k not in ("layers", "blocks")})
            report.layers = {name: LayerRecord(**_known(LayerRecord, entry)) for name, entry in data["layers"].items()}
            report.blocks = [BlockRecord(**_known(BlockRecord, entry)) for entry in data.get("blocks") or []]
        except (TypeError, AttributeError, KeyError) as err:
            raise ValueError(f"{path} does not hold a valid report ({type(err).__name__}: {err}).") from None
        return report

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
            + (f"; {len(self.skipped)} left dense on purpose" if self.skipped else "")
            + (f"; {len(self.fallbacks)} without calibration data" if self.fallbacks else "")
        )


def _known(cls: Any, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}
