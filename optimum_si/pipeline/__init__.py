"""The walk over the decoder blocks: the walker, the stage protocol it calls, the statistics pass and the pruning
step, the block sources it reads from and writes to, and the dense model's own stream that stages with a global
target read.

Imports: `modeling`, `observers`, `methods`, `checkpoint`, `reporting`, `distributed`. Knows no method by name and
no stage: the stages that ship plug in from their own packages (docs/architecture.md lists them).
"""
