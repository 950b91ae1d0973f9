"""The sparsity patterns the study tables name ("50%", "2:4", ...), in table order, and the recipe fields of each."""

from __future__ import annotations

# label -> the SIConfig fields that select it (N:M patterns imply their sparsity).
PATTERNS: dict[str, dict[str, object]] = {
    "50%": {"sparsity": 0.5, "mask_structure": "unstructured"},
    "60%": {"sparsity": 0.6, "mask_structure": "unstructured"},
    "70%": {"sparsity": 0.7, "mask_structure": "unstructured"},
    "80%": {"sparsity": 0.8, "mask_structure": "unstructured"},
    "2:4": {"mask_structure": "2:4"},
    "4:8": {"mask_structure": "4:8"},
}


def pattern_fields(label: str) -> dict[str, object]:
    """A copy of the recipe fields of pattern `label` (KeyError names the labels)."""
    if label not in PATTERNS:
        raise KeyError(f"unknown pattern {label!r}; known: {', '.join(PATTERNS)}")
    return dict(PATTERNS[label])


def is_n_m(label: str) -> bool:
    return PATTERNS[label]["mask_structure"] != "unstructured"


def pattern_order(label: str) -> int:
    """Position of `label` in table order (unknown labels last)."""
    return list(PATTERNS).index(label) if label in PATTERNS else len(PATTERNS)
