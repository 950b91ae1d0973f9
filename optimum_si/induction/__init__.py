"""Sparsity Induction (arXiv 2602.21652) as a stage of the walk: its config, the stage the walker calls, the block
inducer (learned scales, trained and judged), the distribution-level fold, the architectures' scaling groups and
their resolution against a block and the losses (the optimiser, `DampedAdam`, is the package's `optim.py`, shared with
the reconstruction).

Imports: `fields`, `optim`, `pipeline` (the stage protocol), `modeling`, `observers`, `methods`, `reporting`,
`distributed`.
`config`, `scaling_groups` and this `__init__` are torch-free.
"""
