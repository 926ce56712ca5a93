"""Helper of benchmarks/gpu_check.sh, three sub-commands:

    build WORK [--smoke]          a random-init Llama (~1B parameters; a small one with --smoke) with the tiny
                                  tokenizer, long synthetic preference pairs, and a training YAML for them, in WORK
    train RESULT.json CONFIG.yaml [--key=value ...]
                                  (under `accelerate launch`) the SimPO recipe, measuring tokens/s over the steps
                                  after the first few, and the peak accelerator memory; rank 0 writes RESULT.json
    report WORK/results STEM      one table of every run (tokens/s, peak memory, MFU) -> STEM.json and STEM.md

Tokens are the non-padding tokens of the batches (chosen and rejected rows, the prompt once in each), counted by the
Trainer (include_num_input_tokens_seen=non_padding) over all processes. MFU = 6 x parameters x tokens/s / peak
bf16 FLOP/s of the GPUs: model FLOPs only, so neither attention nor the activation-checkpointing recompute counts.
"""

import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIMED_AFTER_STEP = 5  # the first steps pay for allocator warm-up, kernel selection and ZeRO-3's first gathers
# Dense bf16 peak FLOP/s by GPU name (the datasheets' figures without sparsity); PEAK_TFLOPS overrides.
PEAK_TFLOPS = {"H100 PCIe": 756, "H100 NVL": 835, "H100": 989, "H200": 989, "A100": 312, "L40S": 362, "A10G": 70}

# Shape of the ~1B model: TinyLlama-1.1B's layers (22 x hidden 2048, GQA 32/4 heads) on the tiny 653-token
# vocabulary.
BIG = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
           num_key_value_heads=4)
SMOKE = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

BIG_YAML = """\
# Written by benchmarks/gpu_check_run.py build: SimPO on a random-init Llama and long synthetic pairs.
model_name_or_path: {model}
torch_dtype: bfloat16
attn_implementation: sdpa
dataset_mixer:
  {data}: 1.0
dataset_splits:
- train
beta: 2.0
gamma_beta_ratio: 0.5
max_length: 1024
max_prompt_length: 512
output_dir: {work}/out
seed: 42
max_steps: 20
per_device_train_batch_size: {batch}
gradient_accumulation_steps: 1
learning_rate: 1.0e-6
lr_scheduler_type: cosine
optim: adamw_torch
bf16: true
activation_checkpointing: true
activation_checkpointing_kwargs:
  use_reentrant: false
do_eval: false
eval_strategy: "no"
eval_on_start: false
save_strategy: "no"
logging_steps: 5
report_to: none
include_num_input_tokens_seen: non_padding
"""


def build(work: Path, smoke: bool) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "assets" / "tiny-llama")
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **(SMOKE if smoke else BIG),
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    with torch.device(device):  # initialising a billion weights on the GPU takes seconds, on CPU a minute
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(work / "llama-random")
    tokenizer.save_pretrained(work / "llama-random")
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M-parameter random Llama on {device}")

    # Long pairs from the tiny data's words (one token each for this tokenizer): prompts of 200-400 words and
    # responses of 400-650, so rows of about 800 tokens, a few cut at max_length 1024.
    lines = open(ROOT / "data" / "tiny-prefs" / "train.jsonl").read().splitlines()
    words = sorted({w for line in lines for w in line.split() if w.isalpha()})
    rng = random.Random(0)
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))
    (work / "long-prefs").mkdir(exist_ok=True)
    with open(work / "long-prefs" / "train.jsonl", "w") as f:
        for _ in range(256):
            prompt = text(rng.randint(200, 400))
            user = {"role": "user", "content": prompt}
            row = {side: [user, {"role": "assistant", "content": text(rng.randint(400, 650))}]
                   for side in ("chosen", "rejected")}
            f.write(json.dumps({"prompt": prompt, **row}) + "\n")
    batch = 2 if smoke else 8
    yaml_text = BIG_YAML.format(model=work / "llama-random", data=work / "long-prefs", work=work, batch=batch)
    (work / "llama-random.yaml").write_text(yaml_text)


def train(result_path: str, argv: list[str]) -> None:
    import torch
    from accelerate.state import PartialState
    from transformers import TrainerCallback

    from simpo.cli import train_main

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class Meter(TrainerCallback):
        start = None

        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == TIMED_AFTER_STEP:
                sync()
                self.start = (time.perf_counter(), state.num_input_tokens_seen)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            sync()
            if self.start is None:
                raise RuntimeError(f"max_steps must exceed {TIMED_AFTER_STEP}: nothing was timed")
            seconds, tokens = time.perf_counter() - self.start[0], state.num_input_tokens_seen - self.start[1]
            dist = PartialState()
            result = {
                "tokens_per_s": tokens / seconds,
                "timed_steps": state.global_step - TIMED_AFTER_STEP,
                "timed_tokens": tokens,
                "seconds": seconds,
                # ZeRO-3 leaves each parameter a placeholder with its full size in ds_numel.
                "params": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
                "distributed_type": str(dist.distributed_type).split(".")[-1],
                "num_processes": dist.num_processes,
                "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
            }
            if dist.is_main_process:
                Path(result_path).write_text(json.dumps(result, indent=1))

    train_main(argv, callbacks=[Meter()])


def peak_flops(device: str) -> float | None:
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"]) * 1e12
    for name, tflops in PEAK_TFLOPS.items():  # the more specific names come first
        if name in device:
            return tflops * 1e12
    return None


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "accelerate", "deepspeed", "datasets"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = None
    return out


def report(results_dir: Path, stem: str) -> None:
    runs = []
    modes = ["ddp", "zero3", "fsdp"]
    order = lambda path: (path.stem.startswith("llama"), modes.index(path.stem.split("__")[1]))
    for status_file in sorted(results_dir.glob("*.status"), key=order):
        name = status_file.stem
        model, mode = name.split("__")
        status = status_file.read_text().strip()
        run = {"model": model, "mode": mode, "status": status}
        result_file = results_dir / f"{name}.json"
        if status == "ok" and result_file.exists():
            run.update(json.loads(result_file.read_text()))
            flops = peak_flops(run["device"])
            run["mfu"] = 6 * run["params"] * run["tokens_per_s"] / (flops * run["num_processes"]) if flops else None
        elif status == "ok":
            run["status"] = "failed: finished without writing its result"
        log = results_dir / f"{name}.log"
        if run["status"] != "ok" and log.exists():
            lines = log.read_text(errors="replace").splitlines()
            run["log_tail"] = lines[-15:]
            # The first exception a rank raised, not the launcher's ChildFailedError that follows it.
            errors = [line for line in lines if "Error:" in line and "ChildFailedError" not in line]
            run["error"] = errors[0][:400] if errors else None
        runs.append(run)

    summary = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "versions": versions(), "runs": runs}
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1))

    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lines = [
        f"# GPU check, {summary['date_utc']} UTC",
        "",
        "SimPO recipe (simpo.cli.train_main) through `accelerate launch`, 1 process per mode, bf16 (fp32 in a CPU "
        "SMOKE run), sdpa, activation checkpointing on the random Llama. tokens/s over the steps after step "
        f"{TIMED_AFTER_STEP}; MFU = 6 x params x tokens/s / peak bf16 FLOP/s.",
        "",
        "| model | mode | status | params | tokens/s | peak memory (GiB) | MFU | distributed type | device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['status']} | {fmt(r.get('params'), ',')} | "
            f"{fmt(r.get('tokens_per_s'), ',.0f')} | {fmt(r.get('peak_memory_gib'), '.2f')} | "
            f"{fmt(r.get('mfu'), '.1%')} | {r.get('distributed_type', '-')} | {r.get('device', '-')} |"
        )
    lines += [""] + [f"- {r['model']} / {r['mode']}: {r['error']}" for r in runs if r.get("error")]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()), ""]
    Path(f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "build":
        build(Path(rest[0]), smoke="--smoke" in rest)
    elif command == "train":
        train(rest[0], rest[1:])
    elif command == "report":
        report(Path(rest[0]), rest[1])
    else:
        sys.exit(__doc__)
