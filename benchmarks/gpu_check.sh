#!/usr/bin/env bash
# The GPU acceptance check, on ONE GPU, in under 8 minutes (BUDGET_S): the SimPO recipe on the tiny model and on a
# random Llama with Llama-3.2-1B's shape (vocabulary 128256, tied head), in bf16 as the paper configs train:
#   single process:  the plain path (the reference), the default (fused log-probs with the Triton kernels, prefix
#                    sharing auto, which is FlexAttention on a GPU), LoRA, and on the 1B Llama also the fused path's
#                    torch tiles (SIMPO_LOGPS_KERNEL=torch) and the default without activation checkpointing
#   accelerate launch, 1 process each:  DDP (multi_gpu.yaml), DeepSpeed ZeRO-3, FSDP2, with the default settings
# Every run's first-step loss must equal the same model's plain path within bf16 tolerance, its losses be finite, and
# nothing fall back silently (fused log-probs at every step, the layout asked for); one table of all of it, with
# tokens/s, peak memory and MFU, goes to benchmarks/results/gpu_check_<UTC time>.{json,md}. Exit 1 unless all ok.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine
#   SMOKE=1 bash benchmarks/gpu_check.sh         # the CPU rehearsal: small shapes, fp32; FSDP2 skipped (GPUs only)
#   EXTRA=logps,generation,sft,train bash benchmarks/gpu_check.sh   # then the other GPU measurements, in that order
#
# On the device machine (../shared/device/README.md): install the wheels of .whl/ first, e.g.
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD \
#       PYTHON=python3 bash benchmarks/gpu_check.sh
# Environment: PYTHON (default .venv/bin/python if present, else python3), BUDGET_S (all acceptance runs, default
# 420), RUN_TIMEOUT_S (one launch, default 170), PEAK_TFLOPS (the GPU's bf16 peak when gpu_check_run.py's table does
# not know its name).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
SMOKE=${SMOKE:-0}
BUDGET_S=${BUDGET_S:-420}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-170}  # one hung launch must not eat the whole budget
EXTRA=${EXTRA:-}
WORK=$(mktemp -d /tmp/simpo-gpu-check.XXXXXX)
RESULTS=$WORK/results
mkdir -p "$RESULTS"
STEM=benchmarks/results/gpu_check_$(date -u +%Y%m%d-%H%M%S)
[ "$SMOKE" = 1 ] && STEM=$WORK/gpu_check_smoke

if [ "$SMOKE" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "No CUDA GPU visible to $PY: set PYTHON to an interpreter with CUDA torch, or SMOKE=1 for the CPU rehearsal." >&2
    exit 1
fi
echo "== building the random Llama and its data in $WORK"
timeout 120 "$PY" benchmarks/gpu_check_run.py build "$WORK" $([ "$SMOKE" = 1 ] && echo --smoke) || exit 1

if [ "$SMOKE" = 1 ]; then
    PRECISION=(--bf16=false --torch_dtype=float32 --use_cpu=true)
    CONFIGS=(ddp:ddp_cpu.yaml zero3:deepspeed_zero3_cpu.yaml)
else
    PRECISION=(--bf16=true --torch_dtype=bfloat16 --use_cpu=false)
    CONFIGS=(ddp:multi_gpu.yaml zero3:deepspeed_zero3.yaml fsdp2:fsdp.yaml)
fi
# The tiny config as a short run logging every step; the random Llama's YAML already is one.
TINY=(training_configs/tiny-simpo-cpu.yaml --max_steps=10 --eval_strategy=no --eval_on_start=false --do_eval=false
      --save_strategy=no --report_to=none --logging_steps=1 --activation_checkpointing=true "${PRECISION[@]}")
BIG=("$WORK/llama-random.yaml")

# launch MODEL LAUNCHER MODES TRAINING_ARGS...: one process (plain python, or accelerate launch with the config)
launch() {
    local model=$1 launcher=$2 modes=$3
    shift 3
    local name=${model}__${launcher}__${modes} left=$((BUDGET_S - SECONDS))
    [ "$left" -gt "$RUN_TIMEOUT_S" ] && left=$RUN_TIMEOUT_S
    if [ "$left" -lt 30 ]; then
        echo "skipped: time budget (BUDGET_S=$BUDGET_S) spent" > "$RESULTS/$name.status"
    else
        echo "== $model / $launcher / $modes (at most ${left}s)"
        local cmd=("$PY" benchmarks/gpu_check_run.py run "$RESULTS" "$model" "$launcher" "$modes" "$@")
        if [ "$launcher" != single ]; then
            local config=${launcher_config[$launcher]}
            cmd=("$PY" -m accelerate.commands.launch --config_file "accelerate_configs/$config" --num_processes 1
                 --main_process_port 0 $([ "$SMOKE" = 1 ] && echo --mixed_precision no) "${cmd[@]:1}")
        fi
        timeout "$left" "${cmd[@]}" > "$RESULTS/$name.log" 2>&1
        local rc=$?
        case $rc in 0) echo ok ;; 124) echo "failed: timed out" ;; *) echo "failed: exit $rc" ;; esac \
            > "$RESULTS/$name.status"
    fi
    echo "   $(cat "$RESULTS/$name.status")"
}
declare -A launcher_config
for pair in "${CONFIGS[@]}"; do launcher_config[${pair%%:*}]=${pair#*:}; done

launch tiny single plain,default,lora "${TINY[@]}"
launch llama1b single plain,default,torch_tiles,no_checkpointing,lora "${BIG[@]}"
for pair in "${CONFIGS[@]}"; do
    launch tiny "${pair%%:*}" default "${TINY[@]}"
    launch llama1b "${pair%%:*}" default "${BIG[@]}"
done
if [ "$SMOKE" = 1 ]; then
    for model in tiny llama1b; do
        echo "skipped: FSDP2 runs on GPUs only (on CPU accelerate falls back to DDP, which simpo refuses)" \
            > "$RESULTS/${model}__fsdp2__default.status"
    done
fi

rm -rf "$WORK/llama-random"  # GBs of random weights
mkdir -p "$(dirname "$STEM")"
"$PY" benchmarks/gpu_check_run.py report "$RESULTS" "$STEM" $([ "$SMOKE" = 1 ] && echo --allow-skipped)
status=$?
echo "written: $STEM.json $STEM.md (run logs in $RESULTS)"

# The other GPU measurements, each bounded, each writing its own results under benchmarks/results/.
for extra in ${EXTRA//,/ }; do
    echo "== extra: $extra"
    case $extra in
        logps) timeout 600 "$PY" benchmarks/logps_memory.py --device cuda --dtype bfloat16 ;;
        generation) timeout 300 "$PY" benchmarks/generation.py --device cuda --dtype bfloat16 --size 1b ;;
        train) timeout 600 "$PY" benchmarks/gpu_train.py ;;
        sft) for config in multi_gpu.yaml deepspeed_zero3.yaml fsdp.yaml; do
                 timeout 200 "$PY" -m accelerate.commands.launch --config_file "accelerate_configs/$config" \
                     --num_processes 1 --main_process_port 0 scripts/run_sft.py training_configs/tiny-sft-cpu.yaml \
                     --use_cpu=false --bf16=true --packing=true --max_steps=10 --eval_strategy=no --do_eval=false \
                     --save_strategy=no --report_to=none --output_dir="$WORK/sft" && echo "sft $config: ok" \
                     || echo "sft $config: failed"
             done ;;
        *) echo "unknown extra $extra (logps, generation, train, sft)" ;;
    esac
done
exit $status
