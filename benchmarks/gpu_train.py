"""End-to-end SimPO training throughput on one GPU: this project against TRL, same model, data and batch, one run.

    python benchmarks/gpu_train.py                 # GPU: the table, then the memory budget; at most ~8 minutes
    python benchmarks/gpu_train.py --parts table   # GPU: the table alone, about 3 minutes
    python benchmarks/gpu_train.py --smoke         # CPU, CI-sized shapes, fp32, under a minute: every row

Expected duration on one H200 (planned from the step times measured there, not yet run): about 20 s to start the
process server, about half a minute per table row (15 steps at 1-1.5 s, plus the model, tokenising 512 pairs and
the trainer), then the budget search until --time-budget-s (480 s) is spent; no run starts, or runs on, past it.

Model: random-init Llama with Llama-3.2-1B's shape (hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocabulary
128256, tied embeddings), built in each process from a seed. Data: 512 synthetic pairs with UltraFeedback-like
token counts (lognormal: prompts median 110, responses median 310, capped at 1000), token ids written as words that
a WordLevel tokenizer with Llama 3's vocabulary size maps back one to one (gpu_train_setup.py). 8 pairs a step,
max_length 2048, activation checkpointing, AdamW, bf16, sdpa; 12 timed steps after 3 warm-up steps.

Each system (the SYSTEMS table: one line each) runs in a process of its own, bounded by a timeout, so a crash or an
out-of-memory error ends only its row, and the whole run stops starting new work when --time-budget-s is spent.
Per row: pairs/s, real tokens/s (non-padding tokens as the plain layout runs them: the prompt once per side), peak
allocated and reserved memory, MFU (6 x params x real tokens/s over the GPU's dense bf16 peak; attention and the
checkpointing recompute do not count) and the loss of the first step, before any update, on the same 8 pairs in
the same order for every system (the worker checks the order). The memory-budget part then finds each system's
largest per-device batch within --memory-budget-gib (a real cap: torch.cuda.set_per_process_memory_fraction; an
out-of-memory error is "does not fit"), each try in a fresh process, and its pairs/s there. With --smoke the budget
is simulated: RLIMIT_DATA caps how much the process's data segment may grow once training starts.

Results: benchmarks/results/gpu_train_<device>_<UTC time>.{json,md}, with ratios against TRL and against simpo's
plain path (no fused log-probs, no prefix sharing) measured in the same run.
"""

import argparse
import importlib.util
import json
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_train_report
from gpu_train_budget import budget_search


@dataclass(frozen=True)
class System:
    name: str
    label: str
    trainer: str  # "simpo" (SimPOTrainer) or "trl" (CPOTrainer, loss_type simpo, cpo_alpha 0)
    keys: dict = field(default_factory=dict)  # on top of the shared config: simpo's keys, or CPOConfig's for "trl"
    requires: str | None = None  # a module the row needs; skipped (and said so) when it is not installed
    gpu_only: bool = False  # skipped (and said so) in --smoke runs: e.g. inductor compiling C++ on a 2-core CPU


SYSTEMS = [
    System("trl", 'TRL CPOTrainer(loss_type="simpo", cpo_alpha=0)', "trl"),
    # simpo's rows: its defaults, checkpointing auto included (the TRL rows keep the shared config's checkpointing)
    System(
        "simpo",
        "simpo default (fused log-probs, prefix sharing auto: FlexAttention on GPUs, checkpointing auto)",
        "simpo",
        {"activation_checkpointing": "auto"},
    ),
    System(
        "simpo_dense_masks",
        "simpo, prefix sharing with dense sdpa masks (flex_attention: false)",
        "simpo",
        {"flex_attention": False},
    ),
    System("simpo_no_prefix", "simpo, fused log-probs, no prefix sharing", "simpo", {"prefix_sharing": False}),
    System(
        "simpo_padding_free",
        "simpo, padding_free: true (checkpointing auto)",
        "simpo",
        {"padding_free": True, "activation_checkpointing": "auto"},
    ),
    System("simpo_compiled", "simpo default + torch_compile: true", "simpo", {"torch_compile": True}, gpu_only=True),
    System(
        "simpo_plain",
        "simpo plain path (no fused log-probs, no prefix sharing)",
        "simpo",
        {"fused_logps": False, "prefix_sharing": False},
    ),
    System(
        "trl_liger",
        "TRL CPOTrainer simpo + Liger kernels (use_liger_kernel)",
        "trl",
        {"use_liger_kernel": True},
        requires="liger_kernel",
    ),
]

LLAMA_3_2_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
)
SETTINGS = {
    # budget_*: the memory-budget search (a grid of budget_step pairs up to budget_max_batch, at most budget_tries
    # runs a system, each budget_warmup + budget_timed steps); min_run_s: no run starts with less time left.
    "gpu": dict(
        shape=LLAMA_3_2_1B,
        lengths={"prompt": [110, 0.7], "response": [310, 0.55], "max": 1000},
        num_pairs=512,
        batch=8,
        warmup=3,
        timed=12,
        max_length=2048,
        max_prompt_length=1800,
        dtype="bfloat16",
        device="cuda",
        memory_budget_gib=80.0,
        budget_step=8,
        budget_max_batch=128,
        budget_tries=3,
        budget_warmup=1,
        budget_timed=2,
        time_budget_s=480,
        run_timeout_s=150,
        min_run_s=20,
    ),
    "smoke": dict(
        shape=dict(
            vocab_size=4096,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        lengths={"prompt": [12, 0.5], "response": [30, 0.6], "max": 100},
        num_pairs=16,
        batch=4,
        warmup=1,
        timed=1,
        max_length=256,
        max_prompt_length=128,
        dtype="float32",
        device="cpu",
        memory_budget_gib=0.11,
        budget_step=4,
        budget_max_batch=8,
        budget_tries=2,
        budget_warmup=1,
        budget_timed=1,
        time_budget_s=600,
        run_timeout_s=120,
        min_run_s=2,
    ),
}


def shared_config(s: dict, batch: int, steps: int, output_dir: str) -> dict:
    """The run every system shares, in simpo's key names (the TRL rows get the same TrainingArguments)."""
    return {
        "torch_dtype": s["dtype"],
        "attn_implementation": "sdpa",
        "bf16": s["dtype"] == "bfloat16",
        "use_cpu": s["device"] == "cpu",
        "beta": 2.0,
        "gamma_beta_ratio": 0.5,
        "max_length": s["max_length"],
        "max_prompt_length": s["max_prompt_length"],
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "learning_rate": 1e-6,
        "lr_scheduler_type": "constant",
        "optim": "adamw_torch",
        "activation_checkpointing": True,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
        "train_sampling_strategy": "sequential",  # the same pairs in the same order for every system
        "seed": 42,
        "logging_steps": 10_000,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "output_dir": output_dir,
    }


def cuda_works() -> None:
    import torch

    torch.zeros(1, device="cuda")  # fails in a fork of a process whose imports initialised CUDA


class Runner:
    """Starts each run in a fresh process, forked from a server that has the libraries imported (a run then costs
    its own work, not seconds of imports), bounded by a timeout and by what is left of the time budget. Should a
    forked process fail to use the GPU, each run starts a fresh interpreter instead (spawn)."""

    def __init__(self, s: dict, workdir: Path, start_method: str = "forkserver"):
        self.s, self.workdir, self.runs = s, workdir, 0
        self.deadline = time.monotonic() + s["time_budget_s"]
        start = time.monotonic()
        # is_available() through NVML: the server's imports (deepspeed's accelerator probe) then leave CUDA alone
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
        self.context = multiprocessing.get_context(start_method)
        # deepspeed: accelerate imports it when installed (a second a run otherwise); missing modules are skipped
        if start_method == "forkserver":
            self.context.set_forkserver_preload(
                [
                    "torch",
                    "transformers",
                    "datasets",
                    "deepspeed",
                    "gpu_train_worker",
                    "simpo.train.trainer",
                    "trl.experimental.cpo",
                ]
            )
        warm = self.context.Process(target=cuda_works if s["device"] == "cuda" else os.getpid)
        warm.start(), warm.join()  # starts the server, so that no run's time includes it
        if warm.exitcode != 0:
            print("A forked process cannot use the GPU here: each run starts a fresh interpreter instead.")
            self.context = multiprocessing.get_context("spawn")
        self.start_method = self.context.get_start_method()
        self.startup_s = time.monotonic() - start

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, system: System, batch: int, warmup: int, timed: int, budget_gib: float | None = None) -> dict:
        import gpu_train_worker

        if system.requires and importlib.util.find_spec(system.requires) is None:
            return {"status": f"skipped: {system.requires} is not installed"}
        if system.gpu_only and self.s["device"] != "cuda":
            return {"status": "skipped: GPU runs only (tests/train/test_trainer.py checks torch_compile on CPU)"}
        timeout = min(self.s["run_timeout_s"], self.left())
        if timeout < self.s["min_run_s"]:
            return {"status": "skipped: time budget spent"}
        self.runs += 1
        run_dir = self.workdir / f"{self.runs:02d}-{system.name}-b{batch}"
        run_dir.mkdir(parents=True)
        spec = {
            "trainer": system.trainer,
            "keys": system.keys,
            "shape": self.s["shape"],
            "lengths": self.s["lengths"],
            "num_pairs": self.s["num_pairs"],
            "seed": 0,
            "warmup": warmup,
            "timed": timed,
            "device": self.s["device"],
            "memory_budget_gib": budget_gib,
            "workdir": str(run_dir),
            "result": str(run_dir / "result.json"),
            "config": shared_config(self.s, batch, warmup + timed, str(run_dir / "out")),
        }
        start = time.monotonic()
        process = self.context.Process(target=gpu_train_worker.main, args=(spec, str(run_dir / "log.txt")))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            result = {"status": f"failed: timed out after {timeout:.0f} s"}
        elif (run_dir / "result.json").exists():
            result = json.loads((run_dir / "result.json").read_text())
        else:
            result = {"status": f"failed: exit code {process.exitcode} without a result"}
        result["wall_s"] = time.monotonic() - start
        if result["status"] != "ok":
            result["log_tail"] = (run_dir / "log.txt").read_text(errors="replace").splitlines()[-12:]
        print(f"  {system.name:20s} batch {batch:4d}: {summary(result)}", flush=True)
        return result


def summary(result: dict) -> str:
    if result["status"] != "ok":
        return f"{result['status']} {result.get('error', '')}"
    return (
        f"{result['pairs_per_s']:.2f} pairs/s, {result['tokens_per_s']:,.0f} tokens/s, first-step loss "
        f"{result['first_loss']:.5f} ({result['wall_s']:.0f} s)"
    )


def throughput_table(runner: Runner, systems: list[System]) -> list[dict]:
    s = runner.s
    print(f"== throughput: {s['batch']} pairs a step, {s['timed']} timed steps after {s['warmup']} warm-up")
    return [
        {"system": x.name, "label": x.label, "batch": s["batch"], **runner.run(x, s["batch"], s["warmup"], s["timed"])}
        for x in systems
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, fp32: the plumbing, in CI")
    parser.add_argument("--systems", default=",".join(x.name for x in SYSTEMS), help="comma-separated SYSTEMS names")
    parser.add_argument("--parts", default="table,budget", help="table, budget, or both (the default)")
    parser.add_argument(
        "--memory-budget-gib",
        type=float,
        help="GPU: the memory a run may use (default 80). "
        "--smoke: how much the data segment may grow once training starts (default 0.11)",
    )
    parser.add_argument("--budget-max-batch", type=int, help="largest batch the search tries (128; 8)")
    parser.add_argument("--time-budget-s", type=float, help="no run starts after this many seconds (480; 600)")
    parser.add_argument("--run-timeout-s", type=float, help="one run's limit in seconds (150; 120)")
    parser.add_argument("--out-dir", help="where the results go (benchmarks/results; --smoke: outputs/gpu_train)")
    parser.add_argument(
        "--start-method",
        choices=["forkserver", "spawn"],
        default="forkserver",
        help="how runs start: forked from a server with the imports done (falls back to spawn by "
        "itself when a forked process cannot use the GPU), or a fresh interpreter each",
    )
    parser.add_argument("--work-dir", help="keep each run's config, log and result here (default: a temporary one)")
    args = parser.parse_args(argv)

    s = dict(SETTINGS["smoke" if args.smoke else "gpu"])
    for key in ("memory_budget_gib", "budget_max_batch", "time_budget_s", "run_timeout_s"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    by_name = {x.name: x for x in SYSTEMS}
    unknown = [n for n in args.systems.split(",") if n not in by_name]
    if unknown:
        sys.exit(f"Unknown systems {unknown}; the SYSTEMS table has {list(by_name)}.")
    systems = [by_name[n] for n in args.systems.split(",")]
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            sys.exit("No CUDA GPU is visible: run this on a GPU machine, or with --smoke for the CPU plumbing check.")
    os.environ.update(
        HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", TRL_EXPERIMENTAL_SILENCE="1"
    )

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="simpo-gpu-train-") as temporary:
        runner = Runner(s, Path(args.work_dir or temporary), args.start_method)
        table = throughput_table(runner, systems) if "table" in args.parts else []
        basis = table or [{"status": "ok"}] * len(systems)  # without the table's figures: start at its batch
        budget = budget_search(runner, systems, basis, s["memory_budget_gib"]) if "budget" in args.parts else []
    results = gpu_train_report.assemble(
        s,
        args.smoke,
        table,
        budget,
        time.monotonic() - started,
        {"start_method": runner.start_method, "startup_s": runner.startup_s},
    )
    out_dir = Path(args.out_dir or ROOT / ("outputs/gpu_train" if args.smoke else "benchmarks/results"))
    stem = gpu_train_report.write(results, out_dir)
    print("\n" + Path(f"{stem}.md").read_text())
    print(f"written: {stem}.json {stem}.md")


if __name__ == "__main__":
    main()
