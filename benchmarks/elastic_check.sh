#!/usr/bin/env bash
# Elastic resume on GPUs (docs/elastic-resume.md), apart from the acceptance check (gpu_check.sh): FSDP2, DDP and
# ZeRO-3, each 2 -> 1 -> 2 processes against an uninterrupted 2-process run. Needs 2 GPUs (rows skipped otherwise).
#   bash benchmarks/elastic_check.sh [fsdp2 ddp zero3]
# Environment: PYTHON (default .venv/bin/python if present, else python3), RESULTS_DIR (default $OUT when set, else
# benchmarks/results), RUN_TIMEOUT_S (one launch, default 200).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
exec "$PY" benchmarks/elastic_check.py "${RESULTS_DIR:-${OUT:-benchmarks/results}}" "$@"
