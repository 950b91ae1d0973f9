"""Publishing a run: the pruned checkpoint written into its folder (safetensors, the recipe, the report, charts and
the model card), the card itself, and evaluation results recorded into a saved checkpoint later.

Imports: `recipe`, `reporting`, `checkpoint`, `modeling`, `data`, `version`.
"""
