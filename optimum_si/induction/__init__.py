"""Sparsity Induction (arXiv 2602.21652) as a stage of the walk: its config, the stage the walker calls, the block
inducer (learned scales, trained and judged), the distribution-level fold, the architectures' scaling groups and
their resolution against a block, the losses and the optimiser.

Imports: `fields`, `pipeline` (the stage protocol), `modeling`, `observers`, `methods`, `reporting`, `distributed`.
`config`, `scaling_groups` and this `__init__` are torch-free.
"""
