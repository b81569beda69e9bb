#!/usr/bin/env bash
# The paper's Tables 1-3 in order (pre-training, fine-tuning, evaluation), resumable, then
# runs/paper/paper_tables.md with the paper's numbers beside the measured ones.
#   scripts/reproduce_paper.sh --data /data --gpus 8
#   scripts/reproduce_paper.sh --data /data --dry-run      # every config built, every subset listed, the plan
# Options are python -m fitgap.reproduce's (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m fitgap.reproduce "$@"
