"""What a run will prune and how sparse: the plan (each block's targets and their sparsities) and OWL, the
non-uniform allocation profiled on the dense model (its config, its math, its profiling stage).

Imports: `fields`, `pipeline` (the stage protocol), `modeling`, `observers`, `methods`, `distributed`. `config`,
`allocation` and this `__init__` are torch-free.
"""
