#!/usr/bin/env bash
# The GPU check in one command (docs/gpu-check.md): bash benchmarks/gpu_check.sh OUT_DIR [more options]
# Runs `python -m benchmarks.gpu_check --out OUT_DIR` from the repository root with the lent machines' python3 (or
# $PYTHON, or .venv/bin/python when there is one); every extra argument is passed on (e.g. --cpu, --budget-s 300).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [--cpu] [--budget-s 480] [--sections ...]" >&2
  exit 2
fi
out="$1"
shift
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$PYTHON" -m benchmarks.gpu_check --out "$out" "$@"
