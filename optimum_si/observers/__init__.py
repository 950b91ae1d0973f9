"""What the walk measures without changing anything: the input statistics of the targets (per-channel sums of x^2,
X X^T) and how far a pruned block's output moved from the dense block's. Imports: `modeling`, `distributed`."""
