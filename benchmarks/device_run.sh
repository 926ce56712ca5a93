#!/usr/bin/env bash
# The GPU check for a lent GPU machine (../shared/device/README.md), as two commands of at most 5 minutes each
# (LIMIT_S, default 290), so that both fit a 15-minute reservation with the machine's start. Each installs the
# wheels .whl/ carries and leaves everything in $OUT, the folder whose files come back (commit the tables under
# benchmarks/results/):
#
#   PART=speed (the default, the questions that matter most): on the same random Llama-3.2-1B-shape model, data and
#       batch, pairs/s, peak memory, MFU, first-step loss and what ran (log-prob kernel, attention, checkpointing,
#       Liger, first-step, compile and tile warm-up seconds, graphs, recompiles) for simpo's default, simpo
#       padding-free, and TRL's CPOTrainer (loss_type simpo) with and without use_liger_kernel
#       (benchmarks/gpu_train.py --parts table: gpu_train_<gpu>_<time>.{json,md}); then the loss-kernel
#       micro-benchmark (plain vs simpo's Triton path vs TRL's and Liger's kernels) at hidden 4096, vocabulary
#       128256, 4 x 2048 tokens (benchmarks/logps_memory.py: logps_speed.{json,md}).
#   PART=correctness: first the start-up self-check's table on the 1B Llama in bf16, settings at auto: every fast
#       path against the plain one, its figures, the layouts' step times, what was kept (benchmarks/
#       self_check_device.py: self_check_<gpu>.{json,md}, at most 80 s); then the 1B Llama's first-step loss under
#       DDP, FSDP2 and ZeRO-3 against the single-process plain path, the fused path at every step, the kernel, layout
#       and attention that ran, compiles (benchmarks/gpu_check.sh RUNS=distributed: gpu_check_<time>.{json,md},
#       gpu_check_runs.tgz).
#   PART=acceptance: the whole acceptance check (about 8 minutes: LIMIT_S=570); PART=extra EXTRA=...: another
#       measurement (gpu_check.sh ACCEPTANCE=0).
#
#   bash ../shared/device/prepare_wheels.sh      # here, once: fills .whl/ (git-ignored)
#   device run: command "bash benchmarks/device_run.sh", carry [".whl"], timeout_s 320
#   device run: command "PART=correctness bash benchmarks/device_run.sh", carry [".whl"], timeout_s 320
#   OUT=$(mktemp -d) SMOKE=1 bash benchmarks/device_run.sh                  # the CPU rehearsals (no wheels needed)
#   OUT=$(mktemp -d) SMOKE=1 PART=correctness bash benchmarks/device_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back (the device machine sets it)}"
PART=${PART:-speed}
SMOKE=${SMOKE:-0}
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD PYTHON=${PYTHON:-python3}
fi
export PYTHONUNBUFFERED=1 RESULTS_DIR=$OUT PYTHONPATH=${PYTHONPATH:-$PWD} HF_HUB_OFFLINE=1
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
# 290 s a command on the GPU; a CPU rehearsal's processes start and run slower: 570 s unless LIMIT_S says otherwise
LIMIT_S=${LIMIT_S:-$([ "$PART" = acceptance ] || [ "$SMOKE" = 1 ] && echo 570 || echo 290)}
RUN_TIMEOUT_S=$([ "$SMOKE" = 1 ] && echo 200 || echo 100)  # one launch
started=$SECONDS

speed() {
    local smoke=() cases=4096:128256:4x2048 device=(--device cuda --dtype bfloat16)
    if [ "$SMOKE" = 1 ]; then smoke=(--smoke); cases=64:4096:1x128; device=(--device cpu --dtype float32); fi
    echo "== end to end: simpo default, simpo padding-free, TRL, TRL + Liger (at most $((LIMIT_S - 90)) s)"
    "$PY" benchmarks/gpu_train.py "${smoke[@]}" --parts table --systems simpo,simpo_padding_free,trl,trl_liger \
        --time-budget-s $((LIMIT_S - 110)) --run-timeout-s "$RUN_TIMEOUT_S" --out-dir "$OUT"
    local end_to_end=$? left=$((LIMIT_S - (SECONDS - started) - 10))
    echo "== the loss kernels at $cases (at most ${left} s)"
    if [ "$left" -ge 30 ]; then
        timeout -k 5 "$left" "$PY" benchmarks/logps_memory.py "${device[@]}" --cases "$cases" --rounds 1 \
            --warmups 1 --repeats 3 --methods plain,triton,trl,liger --out "$OUT/logps_speed"
        case $? in 0) ;; 124|137) echo "the loss kernels: timed out after ${left} s" ;; *) echo "the loss kernels: failed" ;; esac
    else
        echo "skipped: no time left"
    fi
    return $end_to_end
}

case $PART in
    speed) timeout -k 10 "$LIMIT_S" bash -c "$(declare -f speed); $(declare -p LIMIT_S SMOKE OUT PY RUN_TIMEOUT_S); started=0; speed" \
               2>&1 | tee "$OUT/device_speed.log" ;;
    correctness) smoke=(); [ "$SMOKE" = 1 ] && smoke=(--smoke)
                 echo "== the start-up self-check (at most 80 s)"
                 timeout -k 5 80 "$PY" benchmarks/self_check_device.py "${smoke[@]}" --out-dir "$OUT" 2>&1 \
                     | tee "$OUT/self_check.log" | grep -E '^(#|-|\|)'
                 left=$((LIMIT_S - (SECONDS - started)))
                 RUNS=distributed BUDGET_S=$((left - 40)) RUN_TIMEOUT_S=$RUN_TIMEOUT_S SMOKE=$SMOKE \
                     timeout -k 10 "$left" bash benchmarks/gpu_check.sh 2>&1 | tee "$OUT/gpu_check.log" ;;
    acceptance) SMOKE=$SMOKE timeout -k 10 "$LIMIT_S" bash benchmarks/gpu_check.sh 2>&1 | tee "$OUT/gpu_check.log" ;;
    extra) ACCEPTANCE=0 SMOKE=$SMOKE timeout -k 10 "$LIMIT_S" bash benchmarks/gpu_check.sh 2>&1 \
               | tee "$OUT/gpu_check.log" ;;
    *) echo "PART is speed, correctness, acceptance or extra (got $PART)" >&2; exit 2 ;;
esac
status=${PIPESTATUS[0]}
echo "== $PART: exit $status after $((SECONDS - started)) s (limit ${LIMIT_S} s)"
exit "$status"
