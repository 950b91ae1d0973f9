"""The GPU check: one command that measures optimum-si's CUDA paths on a lent GPU machine and writes gpu_check.json
and gpu_check.md into an output folder after every record (docs/gpu-check.md).

    bash benchmarks/gpu_check.sh "$OUT"                      # on the GPU machine: the whole check, under 8 minutes
    python -m benchmarks.gpu_check --out DIR --cpu           # the same plumbing on tiny models, CPU only (seconds)
    python -m benchmarks.gpu_check --pack                    # here: the asset pack the GPU machine needs for SmolLM2

Sections, most valuable first (sections.py): environment, cuda_tests (`pytest -m gpu`), smollm2 (methods against
the reference loop and the CPU tables), llama8b (an 8B-shaped checkpoint streamed; per-block seconds and device
peaks, 8B and 70B projected), semi_structured (2:4 kernels). Each runs in a process of its own under its share of the
budget and reports through a JSON-lines channel (child.py); the parent (run.py) folds the records into the document.
"""
