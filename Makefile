# Convenience targets; each is a thin wrapper over the scripts the README documents.
PY := .venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup test run bench
setup:
	bash .ci/setup
test:
	bash .ci/test
run: setup
	$(PY) examples/prune_smollm2.py
bench: setup
	$(PY) -m benchmarks.runner quality
