#!/usr/bin/env bash
# The GPU acceptance check, on ONE GPU, in under 8 minutes (BUDGET_S): the SimPO recipe on the tiny model and on a
# random Llama with Llama-3.2-1B's shape (vocabulary 128256, tied head), in bf16 as the paper configs train:
#   single process:  the plain path (the reference), the default (fused log-probs with the Triton kernels, prefix
#                    sharing auto, which is FlexAttention on a GPU), LoRA, and on the 1B Llama also the fused path's
#                    torch tiles (SIMPO_LOGPS_KERNEL=torch) and the default without activation checkpointing
#   accelerate launch, 1 process each:  DDP (multi_gpu.yaml), DeepSpeed ZeRO-3, FSDP2, with the default settings
# Every run's first-step loss must equal the same model's plain path within bf16 tolerance, its losses be finite, and
# nothing fall back silently (fused log-probs at every step, the layout asked for); one table of all of it, with
# tokens/s, peak memory and MFU, goes to $RESULTS_DIR/gpu_check_<UTC time>.{json,md}. Exit 1 unless all ok.
#
#   bash benchmarks/gpu_check.sh                 # on a GPU machine
#   SMOKE=1 bash benchmarks/gpu_check.sh         # the CPU rehearsal: small shapes, fp32; FSDP2 skipped (GPUs only)
#   RUNS=distributed BUDGET_S=250 bash benchmarks/gpu_check.sh   # the launchers alone (device_run.sh PART=correctness)
#   ACCEPTANCE=0 EXTRA=logps bash benchmarks/gpu_check.sh   # another GPU measurement instead (logps, generation,
#                                                # sft, train): each fills a command of its own (EXTRA_BUDGET_S)
#
# On the lent device machine use benchmarks/device_run.sh: it installs the wheels of .whl/, runs this under an outer
# time limit and leaves everything in $OUT (the folder that comes back).
# Environment: PYTHON (default .venv/bin/python if present, else python3), RESULTS_DIR (default $OUT when set, else
# benchmarks/results), BUDGET_S (all acceptance runs, default 480), RUN_TIMEOUT_S (one launch, default 200),
# EXTRA_BUDGET_S (the acceptance runs and the extras together, default 540), PEAK_TFLOPS (the GPU's bf16 peak when
# gpu_check_run.py's table does not know its name). Every run is bounded with timeout -k: TERM, then KILL 15 s later.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
SMOKE=${SMOKE:-0}
BUDGET_S=${BUDGET_S:-480}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-200}  # one hung launch must not eat the whole budget
EXTRA=${EXTRA:-}
ACCEPTANCE=${ACCEPTANCE:-1}
RUNS=${RUNS:-all}  # all, or distributed: the 1B Llama's plain path and DDP, FSDP2, ZeRO-3 alone (about 4 minutes)
EXTRA_BUDGET_S=${EXTRA_BUDGET_S:-540}
WORK=$(mktemp -d /tmp/simpo-gpu-check.XXXXXX)
RESULTS=$WORK/results
mkdir -p "$RESULTS"
if [ "$SMOKE" = 1 ]; then  # a rehearsal's table is no result: kept out of benchmarks/results
    RESULTS_DIR=${RESULTS_DIR:-${OUT:-$WORK}}
    STEM=$RESULTS_DIR/gpu_check_smoke
else
    RESULTS_DIR=${RESULTS_DIR:-${OUT:-benchmarks/results}}
    STEM=$RESULTS_DIR/gpu_check_$(date -u +%Y%m%d-%H%M%S)
fi
mkdir -p "$RESULTS_DIR"

if [ "$SMOKE" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "No CUDA GPU visible to $PY: set PYTHON to an interpreter with CUDA torch, or SMOKE=1 for the CPU rehearsal." >&2
    exit 1
fi
status=0
acceptance() {
echo "== building the random Llama and its data in $WORK"
timeout -k 15 120 "$PY" benchmarks/gpu_check_run.py build "$WORK" $([ "$SMOKE" = 1 ] && echo --smoke) || exit 1

if [ "$SMOKE" = 1 ]; then
    PRECISION=(--bf16=false --torch_dtype=float32 --use_cpu=true)
    CONFIGS=(ddp:ddp_cpu.yaml zero3:deepspeed_zero3_cpu.yaml)
else
    PRECISION=(--bf16=true --torch_dtype=bfloat16 --use_cpu=false)
    CONFIGS=(ddp:multi_gpu.yaml fsdp2:fsdp.yaml zero3:deepspeed_zero3.yaml)  # DDP crashed; FSDP2 is new; ZeRO-3 ran
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
        timeout -k 15 "$left" "${cmd[@]}" > "$RESULTS/$name.log" 2>&1
        local rc=$?
        case $rc in 0) echo ok ;; 124|137) echo "failed: timed out" ;; *) echo "failed: exit $rc" ;; esac \
            > "$RESULTS/$name.status"
    fi
    echo "   $(cat "$RESULTS/$name.status")"
}
declare -A launcher_config
for pair in "${CONFIGS[@]}"; do launcher_config[${pair%%:*}]=${pair#*:}; done

if [ "$RUNS" = distributed ]; then  # the device check's second command: the launchers against the plain path
    MODELS=(llama1b)
    launch llama1b single plain "${BIG[@]}"
    for pair in "${CONFIGS[@]}"; do launch llama1b "${pair%%:*}" default "${BIG[@]}"; done
else
    MODELS=(tiny llama1b)
    launch tiny single plain,default,lora "${TINY[@]}"
    launch llama1b single plain,default,torch_tiles,no_checkpointing,lora "${BIG[@]}"
    for pair in "${CONFIGS[@]}"; do
        launch tiny "${pair%%:*}" default "${TINY[@]}"
        launch llama1b "${pair%%:*}" default "${BIG[@]}"
    done
fi
if [ "$SMOKE" = 1 ]; then
    for model in "${MODELS[@]}"; do
        echo "skipped: FSDP2 runs on GPUs only (on CPU accelerate falls back to DDP, which simpo refuses)" \
            > "$RESULTS/${model}__fsdp2__default.status"
    done
fi

rm -rf "$WORK/llama-random"  # GBs of random weights
"$PY" benchmarks/gpu_check_run.py report "$RESULTS" "$STEM" $([ "$SMOKE" = 1 ] && echo --allow-skipped)
status=$?
echo "written: $STEM.json $STEM.md (run logs in $RESULTS)"
if [ -n "${OUT:-}" ]; then  # every run's log and record come back with the table
    tar czf "$OUT/gpu_check_runs.tgz" -C "$WORK" --exclude=out results && echo "run logs: $OUT/gpu_check_runs.tgz"
fi

return $status
}
[ "$ACCEPTANCE" = 1 ] && { acceptance; status=$?; }

# The other GPU measurements, each bounded by its own cap and by what is left of EXTRA_BUDGET_S (the whole command's
# share), each writing its results to $RESULTS_DIR.
run_extra() {  # run_extra CAP_S COMMAND...
    local cap=$1 left=$((EXTRA_BUDGET_S - SECONDS))
    shift
    [ "$left" -gt "$cap" ] && left=$cap
    if [ "$left" -lt 60 ]; then
        echo "skipped: EXTRA_BUDGET_S=$EXTRA_BUDGET_S spent (run it with ACCEPTANCE=0 in a command of its own)"
        return 1
    fi
    timeout -k 15 "$left" "$@"
}
for extra in ${EXTRA//,/ }; do
    echo "== extra: $extra"
    case $extra in
        logps) run_extra 540 "$PY" benchmarks/logps_memory.py --device cuda --dtype bfloat16 \
                   --out "$RESULTS_DIR/logps_memory_cuda" ;;
        generation) run_extra 300 "$PY" benchmarks/generation.py --device cuda --dtype bfloat16 --size 1b \
                        --out "$RESULTS_DIR/generation_cuda" ;;
        train) run_extra 540 "$PY" benchmarks/gpu_train.py --out-dir "$RESULTS_DIR" ;;
        sft) for config in multi_gpu.yaml deepspeed_zero3.yaml fsdp.yaml; do
                 run_extra 180 "$PY" -m accelerate.commands.launch --config_file "accelerate_configs/$config" \
                     --num_processes 1 --main_process_port 0 scripts/run_sft.py training_configs/tiny-sft-cpu.yaml \
                     --use_cpu=false --bf16=true --packing=true --max_steps=10 --eval_strategy=no --do_eval=false \
                     --save_strategy=no --report_to=none --output_dir="$WORK/sft" && echo "sft $config: ok" \
                     || echo "sft $config: failed"
             done ;;
        *) echo "unknown extra $extra (logps, generation, train, sft)" ;;
    esac
done
exit $status
