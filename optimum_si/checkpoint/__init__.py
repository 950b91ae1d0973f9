"""Checkpoint files and output folders: safetensors shards read (index, layout conversion) and written (shards, a
streamed run's progress and fingerprint), output folders that are swapped in whole (folders), one writer per folder
(locking), and the names of the files optimum-si writes (files).

Imports: nothing of the package. `files` and this `__init__` are torch-free.
"""
