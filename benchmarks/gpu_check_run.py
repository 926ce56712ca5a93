"""Helper of benchmarks/gpu_check.sh, the GPU acceptance check. Three sub-commands:

    build WORK [--smoke]      a random-init Llama with Llama-3.2-1B's shape (vocabulary 128256, tied head; a small
                              one with --smoke), long synthetic pairs from the tiny data's words, and its YAML
    run RESULTS MODEL LAUNCHER MODE[,MODE...] CONFIG.yaml [--key=value ...]
                              train each MODE in turn in this process (under `accelerate launch` for a launcher,
                              plain python for "single") and write RESULTS/<model>__<launcher>__<mode>.json
    report RESULTS STEM [--allow-skipped]
                              one table -> STEM.json and STEM.md; exits 1 unless every run is ok (or, with
                              --allow-skipped, skipped: the CPU rehearsal skips FSDP2)

A run is ok when it finished, its first logged loss (step 1: the initial weights on the first batch, which every
launcher and mode shares) equals the same model's single-process plain path to bf16 tolerance, its losses are
finite, and nothing fell back silently: the fused modes ran the tiled log-probs at every step and the layout is the
one asked for. tokens/s: the trainer's own real-token throughput (the prompt counted per side, as the plain layout
runs it) averaged over the steps after TIMED_AFTER_STEP; MFU = 6 x parameters x tokens/s / peak bf16 FLOP/s (model
FLOPs of the plain layout's work).
"""

import gc
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIMED_AFTER_STEP = 4  # the first steps pay for allocator warm-up, kernel compiles and ZeRO-3's first gathers
LOSS_TOLERANCE = 0.02  # |first loss - plain path's|: bf16 log-probs averaged over hundreds of tokens, loss ~1.3
# Dense bf16 peak FLOP/s by GPU name (the datasheets' figures without sparsity); PEAK_TFLOPS overrides.
PEAK_TFLOPS = {"H100 PCIe": 756, "H100 NVL": 835, "H100": 989, "H200": 989, "A100": 312, "L40S": 362, "A10G": 70}
# mode -> (training keys, whether the fused log-probs must run, the layout it must get). The fused path's kernel on a
# GPU is Triton (simpo/kernels/triton_tiles.py) unless SIMPO_LOGPS_KERNEL says torch: the torch_tiles mode.
MODES = {
    "plain": (["--fused_logps=false", "--prefix_sharing=false"], False, "plain"),
    "default": ([], True, "prefix sharing"),
    "torch_tiles": ([], True, "prefix sharing"),
    "no_checkpointing": (["--activation_checkpointing=false"], True, "prefix sharing"),
    "padding_free": (["--padding_free=true"], True, "prefix sharing + padding-free"),
    "lora": (["--use_peft=true", "--lora_r=16", "--lora_alpha=32"], True, "prefix sharing"),
}
LLAMA_3_2_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=True,
)
SMOKE = dict(
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)

YAML = """\
# Written by benchmarks/gpu_check_run.py build: SimPO on a random-init Llama and long synthetic pairs.
model_name_or_path: {model}
torch_dtype: {dtype}
attn_implementation: sdpa
dataset_mixer:
  {data}: 1.0
dataset_splits:
- train
beta: 2.0
gamma_beta_ratio: 0.5
max_length: 1024
max_prompt_length: 512
seed: 42
max_steps: {steps}
per_device_train_batch_size: {batch}
gradient_accumulation_steps: 1
learning_rate: 1.0e-6
lr_scheduler_type: cosine
optim: adamw_torch
bf16: {bf16}
use_cpu: {cpu}
activation_checkpointing: true
activation_checkpointing_kwargs:
  use_reentrant: false
do_eval: false
eval_strategy: "no"
eval_on_start: false
save_strategy: "no"
logging_steps: 1
report_to: none
"""


def build(work: Path, smoke: bool) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "assets" / "tiny-llama")
    # The head has the full vocabulary (the tiny tokenizer uses its first 653 ids): the fused path's tiles, the
    # check of the head and the logits' memory are those of a 128k-vocabulary model.
    config = LlamaConfig(
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **(SMOKE if smoke else LLAMA_3_2_1B),
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    with torch.device(device):  # initialising a billion weights on the GPU takes seconds, on CPU a minute
        model = LlamaForCausalLM(config).to(torch.float32 if smoke else torch.bfloat16)
    model.save_pretrained(work / "llama-random")
    tokenizer.save_pretrained(work / "llama-random")
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M-parameter random Llama on {device}")

    # Long pairs from the tiny data's words (one token each for this tokenizer): prompts of 200-400 words and
    # responses of 400-650, so rows of about 800 tokens, a few cut at max_length 1024.
    lines = open(ROOT / "data" / "tiny-prefs" / "train.jsonl").read().splitlines()
    words = sorted({w for line in lines for w in line.split() if w.isalpha()})
    rng = random.Random(0)
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))
    scale = 8 if smoke else 1
    (work / "long-prefs").mkdir(exist_ok=True)
    with open(work / "long-prefs" / "train.jsonl", "w") as f:
        for _ in range(128):
            prompt = text(rng.randint(200, 400) // scale)
            user = {"role": "user", "content": prompt}
            row = {
                side: [user, {"role": "assistant", "content": text(rng.randint(400, 650) // scale)}]
                for side in ("chosen", "rejected")
            }
            f.write(json.dumps({"prompt": prompt, **row}) + "\n")
    (work / "llama-random.yaml").write_text(
        YAML.format(
            model=work / "llama-random",
            data=work / "long-prefs",
            steps=10,
            batch=2 if smoke else 8,
            dtype="float32" if smoke else "bfloat16",
            bf16=str(not smoke).lower(),
            cpu=str(smoke).lower(),
        )
    )


class Probe:
    """Counts, in this process, the training steps' loss computations and the tiled log-prob calls among them (not
    the start-up self-check's, which runs before the first step), and keeps what the trainer chose (layout, attention
    kernel)."""

    def __init__(self):
        import simpo.train.logps
        from simpo.train.trainer import SimPOTrainer

        self.reset()
        tiled, compute_loss = simpo.train.logps.tiled_logps, SimPOTrainer.compute_loss

        def counting_tiled(*args, **kwargs):
            self.tiled_calls += self.in_step
            return tiled(*args, **kwargs)

        def counting_compute_loss(trainer, *args, **kwargs):
            self.loss_calls += 1
            self.layout, self.attention = trainer.layout.name, trainer.model.config._attn_implementation
            self.kernel_calls = trainer.kernels.calls  # the run's KernelLedger: which kernels ran
            self.in_step = True
            try:
                return compute_loss(trainer, *args, **kwargs)
            finally:
                self.in_step = False

        simpo.train.logps.tiled_logps, SimPOTrainer.compute_loss = counting_tiled, counting_compute_loss

    def reset(self):
        self.tiled_calls = self.loss_calls = 0
        self.in_step = False
        self.layout = self.attention = None
        self.kernel_calls = {}


def compile_counts() -> dict:
    """torch.compile's seconds, graphs and recompiles so far in this process (the run records its own share)."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    return {
        "compile_s": round(sum(compilation_time_metrics.get("_compile.compile_inner", [])), 1),
        "graphs": counters["stats"].get("unique_graphs", 0),
        "recompiles": sum(counters["recompiles"].values()),
    }


def run(results: Path, model: str, launcher: str, modes: list[str], argv: list[str]) -> None:
    import torch
    from accelerate.state import PartialState
    from transformers import TrainerCallback

    from simpo.train.recipe import train_main

    cuda = torch.cuda.is_available()
    probe = Probe()

    class Meter(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            # ZeRO-3 leaves each parameter a placeholder with its full size in ds_numel.
            self.params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
            if cuda:
                torch.cuda.reset_peak_memory_stats()

    for mode in modes:
        keys, fused, layout = MODES[mode]
        name = f"{model}__{launcher}__{mode}"
        record = {"model": model, "launcher": launcher, "mode": mode, "expect_fused": fused, "expect_layout": layout}
        meter, out = Meter(), results / "out" / name
        probe.reset()
        os.environ["SIMPO_LOGPS_KERNEL"] = "torch" if mode == "torch_tiles" else "auto"
        compile_before = compile_counts()
        started = time.perf_counter()
        try:
            code = train_main([*argv, *keys, f"--output_dir={out}"], callbacks=[meter])
            if code >= 128:  # stopped by a signal (the time limit's TERM): the modes left must not run on
                record.update(status="failed", error=f"stopped by signal {code - 128}")
                (results / f"{name}.json").write_text(json.dumps(record, indent=1))
                raise SystemExit(code)
            history = json.loads((out / "trainer_state.json").read_text())["log_history"]
            losses = [h["loss"] for h in history if "loss" in h]
            timed = [
                h["tokens/per_second"] for h in history if "tokens/per_second" in h and h["step"] > TIMED_AFTER_STEP
            ]
            record.update(
                status="ok",
                losses=losses,
                first_loss=losses[0] if losses else None,
                tiled_calls=probe.tiled_calls,
                loss_calls=probe.loss_calls,
                layout=probe.layout,
                attention=probe.attention,
                seconds=round(time.perf_counter() - started, 1),
                # what really ran (never "auto"), and what compiling cost this mode
                kernel=", ".join(sorted(probe.kernel_calls)) or "plain (full logits)",
                **{k: v - compile_before[k] for k, v in compile_counts().items()},
                tokens_per_s=sum(timed) / len(timed) if timed else None,
                params=meter.params,
                peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                distributed_type=str(PartialState().distributed_type).split(".")[-1],
                num_processes=PartialState().num_processes,
                device=torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
            )
        except Exception as error:  # one failing mode must not hide the others' results
            record.update(status="failed", error=f"{type(error).__name__}: {str(error)[:400]}")
        if PartialState().is_main_process:
            (results / f"{name}.json").write_text(json.dumps(record, indent=1))
        remove(out)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)  # the saved model: GBs for the random Llama, not needed


def peak_flops(device: str) -> float | None:
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"]) * 1e12
    return next((tflops * 1e12 for name, tflops in PEAK_TFLOPS.items() if name in device), None)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "accelerate", "deepspeed", "datasets", "triton"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = None
    return out


def verdict(run: dict, reference: dict | None) -> str:
    """ok, or what is wrong with the run."""
    if run["status"] != "ok":
        return run["status"]
    if not run["losses"] or any(loss != loss or abs(loss) == float("inf") for loss in run["losses"]):
        return "failed: non-finite or missing losses"
    if run["expect_fused"] and run["tiled_calls"] != run["loss_calls"]:
        return f"failed: fused log-probs ran at {run['tiled_calls']} of {run['loss_calls']} steps"
    if not run["expect_fused"] and run["tiled_calls"]:
        return "failed: the plain path ran the fused log-probs"
    if not (run["layout"] or "").startswith(run["expect_layout"]):
        return f"failed: layout {run['layout']!r}, expected {run['expect_layout']!r}"
    if reference is None or reference.get("first_loss") is None:
        return "unchecked: no plain-path reference"
    gap = abs(run["first_loss"] - reference["first_loss"])
    return "ok" if gap <= LOSS_TOLERANCE else f"failed: first loss {gap:.3g} from the plain path's"


def report(results: Path, stem: str, allow_skipped: bool = False) -> int:
    runs = []
    for path in sorted(results.glob("*.status")):  # the shell writes one per planned run, ok or not
        model, launcher, modes = path.stem.split("__")
        shell = path.read_text().strip()
        for mode in modes.split(","):
            found = results / f"{model}__{launcher}__{mode}.json"
            run = (
                json.loads(found.read_text())
                if found.exists()
                else {
                    "model": model,
                    "launcher": launcher,
                    "mode": mode,
                    "status": shell if shell != "ok" else "failed: no result written",
                }
            )
            log = results / f"{path.stem}.log"
            if run["status"] != "ok" and log.exists():
                lines = log.read_text(errors="replace").splitlines()
                errors = [line for line in lines if "Error" in line and "ChildFailedError" not in line]
                run.setdefault("error", errors[0][:400] if errors else "\n".join(lines[-5:]))
            runs.append(run)
    references = {r["model"]: r for r in runs if r["launcher"] == "single" and r["mode"] == "plain"}
    for run in runs:
        run["verdict"] = verdict(run, references.get(run["model"]))
        flops = peak_flops(run.get("device", ""))
        if run.get("tokens_per_s") and run.get("params") and flops:
            run["mfu"] = 6 * run["params"] * run["tokens_per_s"] / (flops * run["num_processes"])
    summary = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "versions": versions(), "runs": runs}
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1))
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lines = [
        f"# GPU acceptance check, {summary['date_utc']} UTC",
        "",
        "The SimPO recipe under each launcher (1 process each), bf16 (fp32 in a CPU SMOKE run), on the tiny model and "
        "a random Llama with Llama-3.2-1B's shape. ok: finished, first-step loss within "
        f"{LOSS_TOLERANCE} of the same model's single-process plain path, finite losses, fused log-probs at every "
        "step where asked for, the layout asked for. MFU = 6 x params x tokens/s / peak bf16 FLOP/s.",
        "",
        "| model | launcher | mode | verdict | first loss | fused steps | log-prob kernel | layout | attention | "
        "tokens/s | peak GiB | MFU | compile s | graphs | recompiles |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['model']} | {r['launcher']} | {r['mode']} | {r['verdict']} | {fmt(r.get('first_loss'), '.4f')} | "
            f"{r.get('tiled_calls', '-')}/{r.get('loss_calls', '-')} | {r.get('kernel', '-')} | "
            f"{r.get('layout', '-')} | {r.get('attention', '-')} | {fmt(r.get('tokens_per_s'), ',.0f')} | "
            f"{fmt(r.get('peak_memory_gib'), '.2f')} | {fmt(r.get('mfu'), '.1%')} | {fmt(r.get('compile_s'), '.1f')} "
            f"| {r.get('graphs', '-')} | {r.get('recompiles', '-')} |"
        )
    lines += [""] + [f"- {r['model']} / {r['launcher']} / {r['mode']}: {r['error']}" for r in runs if r.get("error")]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()), ""]
    Path(f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    passed = [r["verdict"] == "ok" or (allow_skipped and r["verdict"].startswith("skipped")) for r in runs]
    return 0 if runs and all(passed) else 1


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "build":
        build(Path(rest[0]), smoke="--smoke" in rest)
    elif command == "run":
        run(Path(rest[0]), rest[1], rest[2], rest[3].split(","), rest[4:])
    elif command == "report":
        sys.exit(report(Path(rest[0]), rest[1], allow_skipped="--allow-skipped" in rest))
    else:
        sys.exit(__doc__)
