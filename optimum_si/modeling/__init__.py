"""How a model is laid out and how its weights are read and written: the architecture tables (where blocks live,
true-sequential groups), the pruning targets of a block, the one writer of weights (with its undo log), accelerate's
offloaded storage, the calibration activations between blocks, block discovery and the capture of the first
block's inputs, and the execution device. Imports: nothing of the package. `devices` and this `__init__` are
torch-free (the recipe checks a device's spelling)."""
