"""The sections of the check, in the order they run: the most valuable results first, so a run stopped early
still has them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    name: str  # its key in gpu_check.json and for --sections
    title: str
    module: str  # benchmarks.gpu_check.<module>.run(ctx)
    share_s: float  # its nominal seconds in a run of NOMINAL_TOTAL_S; scaled to the run's budget


SECTIONS: dict[str, Section] = {s.name: s for s in (
    Section("environment", "Machine and software", "environment", 20),
    Section("cuda_tests", "CUDA tests (pytest -m gpu)", "cuda_tests", 75),
    Section("smollm2", "SmolLM2-135M: methods against the reference loop and the CPU tables", "smollm2", 165),
    Section("llama8b", "Llama-3-8B-shaped checkpoint, streamed block by block", "llama8b", 175),
    Section("semi_structured", "2:4 output as semi-structured sparse tensors", "semi", 45),
)}
NOMINAL_TOTAL_S = sum(s.share_s for s in SECTIONS.values())


def deadlines(names: list[str], start: float, budget_s: float) -> dict[str, float]:
    """Each chosen section's deadline: cumulative shares of `budget_s`, so time a section leaves unused passes on to
    the next ones, and no section runs past the end of the budget."""
    chosen = [SECTIONS[n] for n in names]
    total = sum(s.share_s for s in chosen) or 1.0
    ends, spent = {}, 0.0
    for section in chosen:
        spent += section.share_s
        ends[section.name] = start + budget_s * spent / total
    return ends
