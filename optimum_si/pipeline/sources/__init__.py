"""Block sources: a model in memory, a model offloaded by accelerate, a checkpoint streamed from safetensors."""
