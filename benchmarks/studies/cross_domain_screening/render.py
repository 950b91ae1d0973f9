"""The screening's tables are cross-domain grids, one per SI variant (benchmarks/studies/cross_domain/render.py)."""

from benchmarks.studies.cross_domain.render import render

__all__ = ["render"]
