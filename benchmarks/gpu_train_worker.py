"""One run of benchmarks/gpu_train.py, in a process of its own: the random Llama, the synthetic pairs and one
system's trainer; warm-up steps, then timed steps; a result JSON. Running out of memory is a result ("oom").

The model, tokenizer, data and config are built by gpu_train_setup.py, the same way in every run.
"""

import dataclasses
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import torch
from gpu_train_setup import (
    MODEL_KEYS,
    build_model,
    data_stats,
    parse_config,
    synthetic_pairs,
    token_counts,
    word_tokenizer,
)
from transformers import TrainerCallback, TrainingArguments

OOM_MESSAGES = ("out of memory", "can't allocate memory")  # CUDA's, and the CPU allocator's under RLIMIT_DATA
TRAINING_KEYS = {f.name for f in dataclasses.fields(TrainingArguments)}


def simpo_trainer(spec: dict, dataset, tokenizer, callbacks: list):
    from simpo.train.trainer import SimPOTrainer

    model_args, args = parse_config({**spec["config"], **spec["keys"]}, Path(spec["workdir"]))
    model = build_model(spec["shape"], tokenizer, model_args, args, spec["device"])
    return recording(SimPOTrainer)(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )


def trl_trainer(spec: dict, dataset, tokenizer, callbacks: list):
    """TRL's CPOTrainer with loss_type simpo and cpo_alpha 0 (no NLL term) is SimPO. It gets the same
    TrainingArguments; beta and gamma (= beta * gamma_beta_ratio) under CPOConfig's names. TRL never cuts prompts
    (max_prompt_length): run() checks that no pair needs cutting, so both trainers see the same tokens."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    config = spec["config"]
    model_args, simpo_args = parse_config(config, Path(spec["workdir"]))
    model = build_model(spec["shape"], tokenizer, model_args, simpo_args, spec["device"])
    translated = {
        "beta": config["beta"],
        "simpo_gamma": config["beta"] * config["gamma_beta_ratio"],
        "max_length": config["max_length"],
    }
    untranslated = set(config) - TRAINING_KEYS - set(MODEL_KEYS) - {"gamma_beta_ratio", "max_prompt_length"}
    if untranslated - set(translated):
        raise ValueError(f"No CPOConfig equivalent for {sorted(untranslated - set(translated))}.")
    training = {k: v for k, v in config.items() if k in TRAINING_KEYS}
    args = CPOConfig(**training, **translated, loss_type="simpo", cpo_alpha=0.0, **spec["keys"])
    return recording(CPOTrainer)(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )


TRAINERS = {"simpo": simpo_trainer, "trl": trl_trainer}


def chosen_lengths(inputs: dict) -> list[int]:
    """Chosen response tokens per pair of a batch, from either trainer's batch."""
    if "response_lengths" in inputs:  # simpo: chosen sequences first
        return inputs["response_lengths"][: len(inputs["response_lengths"]) // 2].tolist()
    return (inputs["chosen_labels"] != -100).sum(1).tolist()  # TRL


def recording(trainer_class):
    """The trainer, keeping its first loss (before any update) and the first batch's chosen lengths."""

    class Recording(trainer_class):
        first_loss = first_chosen_lengths = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.first_loss is None:
                self.first_loss = (out[0] if return_outputs else out).detach().float()
                self.first_chosen_lengths = chosen_lengths(inputs)  # one sync, in a warm-up step
            return out

    return Recording


def kernels_that_ran(trainer, spec: dict) -> str:
    """The log-prob path that really ran (never "auto"): simpo's tiled kernel(s) or its plain path; TRL's own."""
    if spec["trainer"] == "trl":
        return "trl + liger" if spec["keys"].get("use_liger_kernel") else "trl"
    if not trainer.args.fused_logps:
        return "plain (full logits)"
    return ", ".join(f"{name} tiles" for name in sorted(trainer.kernels.calls)) or "none"


def compile_stats() -> dict:
    """Seconds torch.compile spent (dynamo and its backend), graphs it compiled, and recompiles (a graph for a code
    object already compiled: a new shape, say)."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    graphs = counters["stats"].get("unique_graphs", 0)
    frames = counters["frames"].get("ok", 0)
    seconds = sum(compilation_time_metrics.get("_compile.compile_inner", []))
    return {
        "compile_s": seconds,
        "graphs": graphs,
        "recompiles": sum(counters["recompiles"].values()),
        "compiled_frames": frames,
    }


def warmup_seconds(trainer) -> float:
    """Seconds the run's Triton tile choice spent measuring (its KernelLedger); 0 for TRL's trainer."""
    ledger = getattr(trainer, "kernels", None)
    return ledger.warmup_seconds if ledger is not None else 0.0


def data_segment_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))


class Meter(TrainerCallback):
    """Times the steps after the warm-up (one device sync at each end of the window, none in between), tracks peak
    memory, and on CPU enforces the simulated memory budget once training starts."""

    def __init__(self, spec: dict):
        self.warmup, self.timed, self.cuda = spec["warmup"], spec["timed"], spec["device"] == "cuda"
        self.cpu_allowance = None if self.cuda else spec.get("memory_budget_gib")
        self.start = self.seconds = self.static_bytes = None
        self.step_start, self.first_step_s = None, None

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.cpu_allowance is not None:  # allocations past it fail as CPU out-of-memory errors do
            limit = data_segment_bytes() + int(self.cpu_allowance * 2**30)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:  # the first step: compiles, autotuning, tile timing included
            self.sync()
            self.first_step_s = time.perf_counter() - self.step_start
        if state.global_step == self.warmup:
            self.sync()
            self.start = time.perf_counter()
        elif state.global_step == self.warmup + self.timed:
            self.sync()
            self.seconds = time.perf_counter() - self.start
            # weights + optimizer state (gradients are freed by then): what a larger batch cannot shrink
            self.static_bytes = torch.cuda.memory_allocated() if self.cuda else None


def run(spec: dict) -> dict:
    batch, warmup, timed = spec["config"]["per_device_train_batch_size"], spec["warmup"], spec["timed"]
    steps = warmup + timed
    pairs = synthetic_pairs(
        max(spec["num_pairs"], batch * steps), spec["lengths"], spec["shape"]["vocab_size"], spec["seed"]
    )
    counts = [token_counts(p) for p in pairs]
    longest = max(c[2] for c in counts)
    if longest > spec["config"]["max_length"]:
        raise ValueError(f"A pair of {longest} tokens exceeds max_length: the trainers would cut it differently.")
    if spec["device"] == "cpu":
        torch.set_num_threads(1)  # the CPU mode is a plumbing check of tiny shapes: more threads only contend
    if spec["device"] == "cuda" and spec.get("memory_budget_gib"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["memory_budget_gib"] * 2**30 / total))

    from datasets import Dataset

    tokenizer = word_tokenizer(spec["shape"]["vocab_size"])
    meter = Meter(spec)
    trainer = TRAINERS[spec["trainer"]](spec, Dataset.from_list(pairs), tokenizer, [meter])
    trainer.train()

    expected = [c[1] for c in counts[:batch]]
    if trainer.first_chosen_lengths != expected:
        raise RuntimeError(
            f"The first batch is not the first {batch} pairs in order: chosen lengths "
            f"{trainer.first_chosen_lengths}, expected {expected}."
        )
    timed_pairs = range(warmup * batch, steps * batch)  # sequential sampling: step s trains pairs s*B .. s*B+B-1
    tokens = sum(counts[i][0] for i in timed_pairs)
    cuda = spec["device"] == "cuda"
    model = trainer.model
    return {
        "status": "ok",
        "pairs_per_s": len(timed_pairs) / meter.seconds,
        "tokens_per_s": tokens / meter.seconds,
        "timed_seconds": meter.seconds,
        "timed_pairs": len(timed_pairs),
        "timed_tokens": tokens,
        "first_loss": trainer.first_loss.item(),
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "static_gib": meter.static_bytes / 2**30 if cuda else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params": sum(p.numel() for p in model.parameters()),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "attention": model.config._attn_implementation,
        "logps_kernel": kernels_that_ran(trainer, spec),
        "liger": getattr(trainer, "liger", None)
        if spec["trainer"] == "simpo"
        else "use_liger_kernel"
        if spec["keys"].get("use_liger_kernel")
        else "off",
        "first_step_s": meter.first_step_s,
        "tile_warmup_s": warmup_seconds(trainer),
        **compile_stats(),
        "activation_checkpointing": getattr(model, "is_activation_checkpointing", None),
        # simpo's batch layout; for a peer, its collator
        "layout": trainer.layout.name if hasattr(trainer, "layout") else type(trainer.data_collator).__name__,
        "fused_logps": getattr(trainer.args, "fused_logps", None),
        "data": data_stats(pairs[: spec["num_pairs"]]),
    }


def main(spec: dict, log_path: str) -> None:
    """Entry point in the child process: output to log_path, the result (or the error) to spec["result"]."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1), os.dup2(log, 2)
    result = {"status": "failed"}
    try:
        result = run(spec)
    except Exception as error:
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        oom = isinstance(error, (torch.OutOfMemoryError, MemoryError)) or any(
            m in str(error).lower() for m in OOM_MESSAGES
        )
        result = {"status": "oom" if oom else "failed", "error": message[:500]}
        traceback.print_exc()
    # after the except block: the traceback's frames, and the tensors they hold, are gone
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    sys.stdout.flush(), sys.stderr.flush()
