#!/usr/bin/env bash
# The one command for a lent GPU machine (../shared/device/README.md): install the wheels that .whl/ carries, run
# benchmarks/gpu_check.sh under an outer time limit, and leave everything in $OUT, the folder whose files come back:
# gpu_check.log, gpu_check_<UTC time>.{json,md} and gpu_check_runs.tgz (every run's log and record); with
# ACCEPTANCE=0 EXTRA=... the extra measurement's own files instead. Commit the tables under benchmarks/results/.
#
#   bash ../shared/device/prepare_wheels.sh                  # here, once: fills .whl/ (git-ignored)
#   device run: command "bash benchmarks/device_run.sh", carry [".whl"], timeout_s 600
#   device run: command "ACCEPTANCE=0 EXTRA=logps bash benchmarks/device_run.sh", ...   # another measurement
#   OUT=$(mktemp -d) SMOKE=1 bash benchmarks/device_run.sh   # the CPU rehearsal of all of it (no wheels needed)
#
# LIMIT_S (default 570) bounds the whole check, below the device's 600 s a command; gpu_check.sh's own budgets
# (BUDGET_S, EXTRA_BUDGET_S) end its runs before that, so the table is written.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back (the device machine sets it)}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PYTHON=${PYTHON:-python3}
fi
export PYTHONUNBUFFERED=1 RESULTS_DIR=$OUT
timeout -k 10 "${LIMIT_S:-570}" bash benchmarks/gpu_check.sh 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
