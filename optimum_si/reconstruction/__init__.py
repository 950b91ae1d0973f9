"""Block reconstruction of the kept weights, as a stage of the walk: once a block's mask is fixed (any method, with or
without Sparsity Induction), its kept weights are refit to the dense block's outputs, and the refit is kept only where
it lowers the block loss on held-out calibration windows. Its config, the stage, the gradient refit and the
closed-form refit.

Imports: `fields`, `optim`, `pipeline` (the stage protocol), `modeling`, `observers`, `reporting`, `distributed`.
`config` and this `__init__` are torch-free.
"""
