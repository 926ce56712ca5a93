#!/usr/bin/env bash
# GPU check of the distributed paths, on ONE GPU, in under 8 minutes: the SimPO recipe (through
# `accelerate launch` and the shipped accelerate configs, 1 process each) on the tiny model and on a ~1B-parameter
# random-init Llama, under DDP, DeepSpeed ZeRO-3 and FSDP2, in bf16 with sdpa. Prints and writes tokens/s, peak GPU
# memory and MFU to benchmarks/results/gpu_check_<UTC time>.{json,md}.
#
#   bash benchmarks/gpu_check.sh
#
# Offline: uses what is installed (torch with CUDA, transformers, accelerate, datasets; DeepSpeed if present, else
# the ZeRO-3 runs are recorded as skipped). simpo is imported from this checkout, installed or not.
# Environment: PYTHON (default .venv/bin/python if present, else python3), BUDGET_S (wall-clock budget for all
# runs, default 420), RUN_TIMEOUT_S (per run, default 150), PEAK_TFLOPS (the GPU's bf16 peak when its name is not
# in gpu_check_run.py's table), SMOKE=1 (a CPU plumbing check: small random Llama, fp32, no GPU needed; FSDP is
# then refused by design).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
SMOKE=${SMOKE:-0}
BUDGET_S=${BUDGET_S:-420}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-150}  # one hung run must not eat the whole budget
WORK=$(mktemp -d /tmp/simpo-gpu-check.XXXXXX)
RESULTS=$WORK/results
mkdir -p "$RESULTS"
STEM=benchmarks/results/gpu_check_$(date -u +%Y%m%d-%H%M%S)
if [ "$SMOKE" = 1 ]; then STEM=$WORK/gpu_check_smoke; fi

if [ "$SMOKE" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "No CUDA GPU visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1)):" \
         "set PYTHON to an interpreter with CUDA torch, or SMOKE=1 for a CPU plumbing run." >&2
    exit 1
fi
HAVE_DEEPSPEED=1
"$PY" -c "import deepspeed" >/dev/null 2>&1 || HAVE_DEEPSPEED=0

echo "== building the random Llama and its data in $WORK"
"$PY" benchmarks/gpu_check_run.py build "$WORK" $([ "$SMOKE" = 1 ] && echo --smoke) || exit 1

if [ "$SMOKE" = 1 ]; then
    PRECISION=(--bf16=false --torch_dtype=float32 --use_cpu=true)
    LAUNCH_PRECISION=(--mixed_precision no)
else
    PRECISION=(--bf16=true --torch_dtype=bfloat16 --use_cpu=false)
    LAUNCH_PRECISION=()
fi
# The tiny config, made a short bf16 GPU run with token counting; the random Llama's YAML already is one.
TINY=(training_configs/tiny-simpo-cpu.yaml --max_steps=20 --attn_implementation=sdpa --eval_strategy=no
      --eval_on_start=false --do_eval=false --save_strategy=no --report_to=none --logging_steps=5
      --include_num_input_tokens_seen=non_padding)
BIG=("$WORK/llama-random.yaml")
[ "$SMOKE" = 1 ] && BIG+=(--max_steps=8)

# run MODEL MODE ACCELERATE_CONFIG TRAINING_ARGS...
run() {
    local model=$1 mode=$2 config=$3
    shift 3
    local name=${model}__${mode} left=$((BUDGET_S - SECONDS))
    [ "$left" -gt "$RUN_TIMEOUT_S" ] && left=$RUN_TIMEOUT_S
    if [ "$mode" = zero3 ] && [ "$HAVE_DEEPSPEED" = 0 ]; then
        echo "skipped: deepspeed is not installed" > "$RESULTS/$name.status"
    elif [ "$left" -lt 30 ]; then
        echo "skipped: time budget (BUDGET_S=$BUDGET_S) spent" > "$RESULTS/$name.status"
    else
        echo "== $model / $mode ($config, at most ${left}s)"
        # --num_processes 1 overrides the configs' 4; port 0 picks a free one.
        timeout "$left" "$PY" -m accelerate.commands.launch --config_file "accelerate_configs/$config" \
            --num_processes 1 --main_process_port 0 "${LAUNCH_PRECISION[@]}" \
            benchmarks/gpu_check_run.py train "$RESULTS/$name.json" "$@" "${PRECISION[@]}" \
            --output_dir="$WORK/out" > "$RESULTS/$name.log" 2>&1
        local rc=$?
        case $rc in
            0) echo ok ;;
            124) echo "failed: timed out" ;;
            *) echo "failed: exit $rc" ;;
        esac > "$RESULTS/$name.status"
        rm -rf "$WORK/out"  # the saved model: GBs for the random Llama, not needed
    fi
    echo "   $(cat "$RESULTS/$name.status")"
}

for mode_config in ddp:multi_gpu.yaml zero3:deepspeed_zero3.yaml fsdp:fsdp.yaml; do
    run tiny "${mode_config%%:*}" "${mode_config#*:}" "${TINY[@]}"
done
for mode_config in ddp:multi_gpu.yaml zero3:deepspeed_zero3.yaml fsdp:fsdp.yaml; do
    run llama-random "${mode_config%%:*}" "${mode_config#*:}" "${BIG[@]}"
done

rm -rf "$WORK/llama-random"  # GBs of random weights
mkdir -p "$(dirname "$STEM")"
"$PY" benchmarks/gpu_check_run.py report "$RESULTS" "$STEM"
echo "written: $STEM.json $STEM.md (run logs in $RESULTS)"
