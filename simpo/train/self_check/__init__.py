"""The start-up self-check (self_check: auto | always | off): before the first optimizer step, a run checks the fast
paths it would train on against the plain reference path on its own device, falls back where one differs or raises,
and, for the settings left at auto, chooses by measurement among the paths that agree.

What is compared. The first SLICE_PAIRS pairs of the training set, each sequence cut to slice_tokens() tokens so
that the plain path's [tokens, vocabulary] logits stay small, are scored by
    the reference: the plain layout (one right-padded row per sequence), the model's full logits, Liger off;
    a path: a layout (prefix sharing, padding-free or not, dense masks or FlexAttention block masks), a log-prob
        kernel (Triton tiles, torch tiles or full logits), Liger on or off;
both in the run's own precision (its weights, its autocast), in the mode training runs in, with the global random
state put back afterwards. A path agrees when every sequence's average response log-prob (what SimPO's reward scales)
is within TOLERANCE of the reference's and, where the launch allows a backward outside training, the gradient of
SimPO's loss on the slice is within TOLERANCE's relative error of the reference's (over the trainable tensors,
smallest first, up to GRAD_PROBE_ELEMENTS elements). That backward fills .grad, which is put back untouched; the
optimizer's state does not exist before its first step. One process and DDP allow it (the check calls the bare
model, so DDP's reducer sees nothing); under DeepSpeed (any ZeRO stage) and FSDP a backward would run their gradient
hooks, which reduce into the optimizer's partitions or the shards, so there the forward is checked (through the
same gathering hooks as training) and the log-probs alone are compared; so it is for FlexAttention on CPU, which
has no backward there. TOLERANCE is per the dtype the model computes in: two correct paths differ by rounding only
(other kernels, other summation orders); a path that lets a token see another, drops a transform or scores another
position differs by more.

The order. Each component's options, best first:
    log-probs   Triton tiles (CUDA) -> torch tiles -> full logits
    layout      prefix sharing with FlexAttention (GPUs) -> with dense masks -> the plain layout
    Liger       on -> off
First the best of each are checked together (on a GPU, every layout of the first tier with them: padding-free or not,
FlexAttention or dense masks for settings at auto; see below); where that agrees, nothing else runs. Where it
differs, each component is checked alone, the others at the reference's, down its order until one agrees (in a tier
of equals on a GPU, every one), and those are checked together; should that still differ, the log-probs, then the
layout, then Liger step down to the reference until the paths together agree. A setting the
user set explicitly (prefix_sharing, padding_free, flex_attention or liger_kernels true; SIMPO_LOGPS_KERNEL) that
the decision leaves out is refused with the figures (FastPathError), never a silent fallback. fused_logps: true, the
default, allows the fall back to full logits.

Measurement. On a GPU (TIMED_DEVICES), the layouts of a tier that agree are timed together with the chosen kernel:
TIMED_STEPS forward and backward passes of the slice (forward only where the backward is not allowed) after the
check's own, and the fastest is kept; the Triton tiles time their tile sizes themselves (simpo/kernels/
triton_tiles.py). On a CPU the first that agrees is kept, so that CPU runs stay bit-identical run to run.

Every process runs the same checks on the same slice; each check's figures are reduced to their maximum over the
processes, so a path that differs on one rank is rejected on all, and rank 0's decision is broadcast: a layout that
differed between ranks would hang a collective. The decision is kept on disk (SIMPO_SELF_CHECK_CACHE, default
~/.cache/simpo/self_check.json, read by rank 0) per device name, precision, model config, trainable parameters,
batch and slice shapes, launch, options and library versions: self_check: auto reuses it, always checks again,
off trains on the first option of each without checking.

Here: the SelfCheck callback (the trainer adds it before the start summary) and the cache. paths.py: Path, Options,
Demand, TOLERANCE, the Decision and how it reads (summary lines, table, refusals). runner.py: the slice (SLICE_PAIRS,
slice_tokens), PathRunner, the comparison, the reduction over processes and the Checker that decides.
"""

import hashlib
import importlib.metadata
import json
import logging
import time

import torch
from transformers import TrainerCallback

from simpo.config.run_record import note_in_run_config
from simpo.errors import FastPathError
from simpo.kernels.tile_cache import cache_file, read_entry, write_entry
from simpo.models.modules import unwrap_model
from simpo.train.self_check.paths import (
    REFERENCE,
    TOLERANCE,
    Decision,
    Options,
    Path,
    Row,
    decision_lines,
    explicit_demands,
    refusals,
    table,
)
from simpo.train.self_check.runner import (
    Checker,
    PathRunner,
    broadcast,
    compute_dtype,
    device_name,
    dist_rank,
    dropout_free,
    side_backward_problem,
    slice_tokens,
    training_slice,
    world,
)

__all__ = [
    "TOLERANCE",
    "Decision",
    "Options",
    "Path",
    "PathRunner",
    "Row",
    "SelfCheck",
    "decision_lines",
    "explicit_demands",
    "table",
]

logger = logging.getLogger(__name__)

TIMED_DEVICES = ("cuda",)


class SelfCheck(TrainerCallback):
    """The check, when training begins (after the model is prepared and a checkpoint loaded, before the start
    summary and the first batch): decides the trainer's path (trainer.use_path) and keeps the Decision."""

    def __init__(self, trainer, options: Options, dense_kernel: str, liger_patch):
        self.trainer, self.options = trainer, options
        self.dense_kernel, self.liger_patch = dense_kernel, liger_patch
        self.decision: Decision | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.decision is None:
            start = time.perf_counter()
            decision = self.decide()
            decision.seconds = time.perf_counter() - start
            problems = refusals(decision, self.options.demands)
            if problems:
                raise FastPathError(*problems)
            self.decision = decision
            self.trainer.use_path(decision.path)
            self.record()

    def decide(self) -> Decision:
        trainer, args = self.trainer, self.trainer.args
        model = trainer.model
        dtype, device = compute_dtype(model, args), device_name(args.device)
        first = self.options.first
        if args.self_check == "off":
            return Decision(first, dtype=dtype, device=device, gradients="-", source="not checked (self_check: off)")
        if first == REFERENCE:
            return Decision(first, dtype=dtype, device=device, gradients="-", source="nothing to check (plain path)")
        vocab = unwrap_model(model).config.get_text_config().vocab_size
        features = training_slice(trainer.train_dataset, vocab, args.max_length, args.label_pad_token_id)
        if not features:
            return Decision(first, dtype=dtype, device=device, gradients="-", source="not checked (no pair to check)")
        shape = f"{len(features)} pairs, at most {slice_tokens(vocab, args.max_length)} tokens a sequence"
        path, key = cache_file("SIMPO_SELF_CHECK_CACHE", "self_check.json"), self.cache_key(dtype, device, shape)
        stored = broadcast(read_entry(path, key) if args.self_check == "auto" and dist_rank() == 0 else None)
        if stored is not None:
            try:
                return Decision.from_dict(stored, source=f"from the cache ({path})")
            except (KeyError, TypeError, ValueError):  # an entry an older simpo wrote: check again
                pass
        decision = self.check(features, dtype, device, shape)
        if dist_rank() == 0:
            write_entry(path, key, decision.to_dict())
        return decision

    def check(self, features: list[dict], dtype: str, device: str, shape: str) -> Decision:
        trainer = self.trainer
        model = trainer.model
        runner = PathRunner(trainer, features, self.dense_kernel, self.liger_patch)
        timed = trainer.args.device.type in TIMED_DEVICES
        was_training = model.training
        model.train(dropout_free(model))  # as training runs, unless dropout would make two runs differ
        devices = [trainer.args.device] if trainer.args.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                checker = Checker(runner, self.options, dtype, timed)
                path = broadcast(checker.decide())
        finally:
            model.train(was_training)
            if self.liger_patch is not None:
                self.liger_patch.enable()  # as before the check; use_path sets the decision's
        gradients = runner.no_backward or ("gradients compared" if runner.probe else "log-probs only")
        return Decision(path, checker.rows, dtype, device, gradients, "checked", slice=shape)

    def cache_key(self, dtype: str, device: str, shape: str) -> str:
        trainer, args = self.trainer, self.trainer.args
        lm = unwrap_model(trainer.model)
        config = {k: v for k, v in lm.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        config["_attn_implementation"] = self.dense_kernel
        digest = lambda text: hashlib.sha1(text.encode()).hexdigest()[:12]
        trainable = sum(getattr(p, "ds_numel", None) or p.numel() for p in lm.parameters() if p.requires_grad)
        launch = f"world {world()}, {side_backward_problem(trainer) or 'backward'}"
        parts = [
            device,
            dtype,
            f"model {digest(json.dumps(config, sort_keys=True, default=str))}",
            f"trainable {trainable}",
            f"checkpointing {bool(args.gradient_checkpointing)}",
            f"batch {args.per_device_train_batch_size}",
            shape,
            launch,
            f"options {digest(self.options.describe())}",
            versions(),
        ]
        return " | ".join(parts)

    def record(self) -> None:
        """The decision in the log, and (main process) at the end of run_config.yaml."""
        lines = decision_lines(self.decision)
        for text in lines + (table(self.decision) if self.decision.rows else []):
            logger.info("self-check: %s", text)
        if self.trainer.args.should_save:
            note_in_run_config(self.trainer.args.output_dir, "start-up self-check", lines)


def versions() -> str:
    found = []
    for name in ("torch", "transformers", "triton", "liger-kernel", "simpo"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)
