"""Elastic resume: a run checkpointed on N processes continues on M with the same global batch and data order.

Why it works: accelerate's seedable sampler shuffles the pairs into one order P that depends on the seed alone, and
deals batches of per_device_train_batch_size round-robin to the processes, so optimizer step s consumes
P[s*G:(s+1)*G] with G = per-device x processes x accumulation; on resume the Trainer skips global_step x accumulation
batches per process, i.e. global_step x G pairs. Keeping G (the accumulation recomputed for M processes) keeps both.

Each checkpoint records the launch that wrote it (LAYOUT_FILE, main process, on save). A relaunch compares it with
its own launch before the model loads (adapt_to_checkpoint, from simpo.run.steps.start_run): it recomputes the
accumulation, refuses what would change the global batch, and converts a DeepSpeed checkpoint into DeepSpeed's
universal format when the process count changed (ZeRO partitions its states per process). ElasticResume, a callback
both recipes add, writes the record and turns on the universal load before DeepSpeed's engine is built.
"""

import glob
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
from transformers import TrainerCallback

from simpo.errors import ConfigError
from simpo.run.launch import uses_deepspeed
from simpo.run.record import read_record, record_digests, write_record

logger = logging.getLogger(__name__)

LAYOUT_FILE = "launch_layout.json"
UNIVERSAL_LATEST = "latest_universal"  # DeepSpeed reads the universal checkpoint's tag from this file


@dataclass(frozen=True)
class Layout:
    processes: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int

    @property
    def global_batch(self) -> int:
        return self.processes * self.per_device_train_batch_size * self.gradient_accumulation_steps

    def arithmetic(self) -> str:
        return (
            f"{self.per_device_train_batch_size} per device x {self.processes} process(es) x "
            f"{self.gradient_accumulation_steps} accumulation = {self.global_batch}"
        )


@dataclass(frozen=True)
class ResumePlan:
    """What a resumed launch changed against its checkpoint (the run keeps it: simpo/run/steps.py's Launch)."""

    checkpoint: str
    written_by: Layout
    now: Layout
    universal: str | None = None  # the DeepSpeed universal checkpoint folder loaded instead of the ZeRO shards

    @property
    def note(self) -> str:
        return (
            f"resumed from {os.path.basename(os.path.normpath(self.checkpoint))} written by "
            f"{self.written_by.processes} processes, now {self.now.processes}"
        )


def launch_layout(args) -> Layout:
    return Layout(max(args.world_size, 1), args.per_device_train_batch_size, args.gradient_accumulation_steps)


def write_layout(checkpoint: str, layout: Layout) -> None:
    with open(os.path.join(checkpoint, LAYOUT_FILE), "w") as f:
        json.dump({**asdict(layout), "global_batch": layout.global_batch}, f, indent=1)


def checkpoint_layout(checkpoint: str) -> Layout | None:
    """The launch that wrote `checkpoint`; None for a checkpoint without LAYOUT_FILE (written before it existed, or
    killed between trainer_state.json and the record)."""
    path = os.path.join(checkpoint, LAYOUT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    return Layout(record["processes"], record["per_device_train_batch_size"], record["gradient_accumulation_steps"])


def processes_from_rng_files(checkpoint: str) -> int:
    """The Trainer saves rng_state.pth in a single process and rng_state_<rank>.pth per process otherwise."""
    return max(len(glob.glob(os.path.join(checkpoint, "rng_state_*.pth"))), 1)


def deepspeed_tag(checkpoint: str) -> str | None:
    """The ZeRO checkpoint's folder inside a Trainer checkpoint (its `latest` file names it), or None."""
    latest = os.path.join(checkpoint, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        return f.read().strip()


def fitted_layout(args, written_by: Layout, now: Layout, where: str) -> Layout:
    """The launch's layout with the checkpoint's global batch: the accumulation recomputed when the process count
    changed and the accumulation given is the checkpoint's. Raises ConfigError when the global batch would change."""
    if (
        now.processes != written_by.processes
        and now.gradient_accumulation_steps == written_by.gradient_accumulation_steps
        and now.per_device_train_batch_size == written_by.per_device_train_batch_size
    ):
        per_step = now.per_device_train_batch_size * now.processes
        if written_by.global_batch % per_step:
            raise ConfigError(
                f"{where} was written with a global batch of {written_by.arithmetic()} pairs; on {now.processes}"
                f" process(es) it needs gradient_accumulation_steps = {written_by.global_batch} / "
                f"({now.per_device_train_batch_size} x {now.processes}) = {written_by.global_batch / per_step:g},"
                " not a whole number. Relaunch on a process count that divides it (or change"
                " per_device_train_batch_size so that per-device x processes x accumulation ="
                f" {written_by.global_batch}), or set allow_global_batch_change: true to train on with another"
                " global batch (the remaining steps then see other pairs than the uninterrupted run)."
            )
        now = Layout(now.processes, now.per_device_train_batch_size, written_by.global_batch // per_step)
        logger.warning(
            "%s was written by %d process(es); on %d, gradient_accumulation_steps becomes %d to keep the"
            " global batch: %s.",
            where,
            written_by.processes,
            now.processes,
            now.gradient_accumulation_steps,
            now.arithmetic(),
        )
    if now.global_batch != written_by.global_batch:
        message = (
            f"{where} was written with a global batch of {written_by.arithmetic()} pairs; this launch has"
            f" {now.arithmetic()}. A different global batch changes the optimisation, and the Trainer would"
            f" skip {now.global_batch} instead of {written_by.global_batch} pairs per step already trained."
            " Keep the checkpoint's gradient_accumulation_steps and per_device_train_batch_size (the"
            " accumulation is then recomputed for the process count), or set allow_global_batch_change:"
            " true to accept it."
        )
        if not args.allow_global_batch_change:
            raise ConfigError(message)
        logger.warning("allow_global_batch_change: %s", message)
    return now


def adapt_to_checkpoint(args, checkpoint: str | None) -> ResumePlan | None:
    """Fit this launch to the checkpoint it resumes, before the model loads: sets args.gradient_accumulation_steps,
    converts a DeepSpeed checkpoint to the universal format when the process count changed, and returns the plan
    (None when the process count is the checkpoint's). Raises ConfigError when the global batch would change (unless
    allowed) or cannot be known."""
    if checkpoint is None:
        return None
    now = launch_layout(args)
    written_by = checkpoint_layout(checkpoint)
    if written_by is None:
        processes = processes_from_rng_files(checkpoint)
        if processes == now.processes:
            return None  # the same launch as far as can be told: the Trainer's own resume
        raise ConfigError(
            f"{checkpoint} has no {LAYOUT_FILE} (the record of the launch that wrote it) and was written by"
            f" {processes} process(es) (its RNG files), not {now.processes}: its global batch cannot be known, so"
            f" the data order cannot be kept. Relaunch on {processes} process(es), or write {LAYOUT_FILE} in it:"
            f' {{"processes": {processes}, "per_device_train_batch_size": ..., "gradient_accumulation_steps": ...}}'
            " with the values it was trained with."
        )
    now = fitted_layout(args, written_by, now, checkpoint)
    args.gradient_accumulation_steps = now.gradient_accumulation_steps
    if now.processes == written_by.processes:
        return None
    universal = None
    tag = deepspeed_tag(checkpoint)
    if tag is not None and uses_deepspeed(args):
        with args.main_process_first(local=False, desc="converting the DeepSpeed checkpoint to universal"):
            universal = convert_to_universal(checkpoint, tag)
    plan = ResumePlan(checkpoint, written_by, now, universal)
    logger.warning("Elastic resume: %s (global batch %s).", plan.note, now.arithmetic())
    return plan


def convert_to_universal(checkpoint: str, tag: str) -> str:
    """DeepSpeed's ds_to_universal, from checkpoint/<tag> into checkpoint/<tag>_universal (kept: a later resume
    reuses it), named in checkpoint/latest_universal. Written into a temporary folder and renamed when complete."""
    target = os.path.join(checkpoint, f"{tag}_universal")
    if os.path.isdir(target) and os.path.isfile(os.path.join(checkpoint, UNIVERSAL_LATEST)):
        logger.info("Using the universal checkpoint already converted: %s", target)
        return target
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    logger.warning(
        "Converting %s to DeepSpeed's universal checkpoint format in %s.", os.path.join(checkpoint, tag), target
    )
    ds_to_universal(
        SimpleNamespace(
            input_folder=os.path.join(checkpoint, tag),
            output_folder=partial,
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=False,
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    os.rename(partial, target)
    with open(os.path.join(checkpoint, UNIVERSAL_LATEST), "w") as f:
        f.write(os.path.basename(target))
    record = read_record(checkpoint)
    if record is not None:  # DeepSpeed loads the converted files with pickle too: their digests join the record
        write_record(checkpoint, record_digests(checkpoint, record))
    return target


def unshare_adam_steps(optimizer) -> int:
    """DeepSpeed's universal ZeRO-3 load (0.19) gives every parameter group one shared `step` tensor, and torch's Adam
    adds 1 to each group's in place: with the Trainer's two groups (decay, no decay) the bias correction would count
    two steps per step (the weights then drift from the uninterrupted run's). Each group gets its own copy; returns how
    many were copied. `optimizer`: the Trainer's, whose innermost `.optimizer` is torch's."""
    while getattr(optimizer, "optimizer", None) is not None:
        optimizer = optimizer.optimizer
    seen, copied = set(), 0
    for param_state in getattr(optimizer, "state", {}).values():
        step = param_state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                param_state["step"] = step.clone()
                copied += 1
            seen.add(id(step))
    return copied


def epoch_tail_steps(plan: ResumePlan, resumed_step: int, max_steps: int, train_pairs: int) -> list[int]:
    """The remaining steps that end an epoch with a partial global batch: there the processes pad their last
    batches from the epoch's start, differently for another process count, so those steps' pairs differ."""
    global_batch = plan.now.global_batch
    if train_pairs % global_batch == 0:
        return []
    per_epoch = -(-train_pairs // global_batch)
    return [step for step in range(resumed_step + 1, max_steps + 1) if step % per_epoch == 0]


class ElasticResume(TrainerCallback):
    """Records each checkpoint's launch layout (main process, on save) and, for a DeepSpeed resume on another
    process count, makes the engine load the universal checkpoint adapt_to_checkpoint converted (`plan`, None for a
    launch that resumes nothing or resumes on the checkpoint's process count)."""

    def __init__(self, plan: ResumePlan | None = None):
        self.plan = plan

    def on_init_end(self, args, state, control, **kwargs):
        plan = self.plan
        if plan is not None and plan.universal is not None:
            from accelerate.state import AcceleratorState

            # The Trainer has built the DeepSpeed config from the accelerate plugin; the engine is built from it in
            # train(), after this.
            config = AcceleratorState().deepspeed_plugin.deepspeed_config
            config.setdefault("checkpoint", {})["load_universal"] = True

    def on_train_begin(self, args, state, control, train_dataloader=None, optimizer=None, **kwargs):
        plan = self.plan
        if plan is not None and plan.universal is not None:
            unshare_adam_steps(optimizer)  # loaded by now (the Trainer loads the checkpoint before this call)
        if plan is None or train_dataloader is None or not state.is_world_process_zero:
            return
        tails = epoch_tail_steps(plan, state.global_step, state.max_steps, len(train_dataloader.dataset))
        if tails:
            logger.warning(
                "Steps %s end an epoch of %d pairs with a partial global batch of %d: accelerate pads each process's"
                " last batch from the epoch's start, so on %d process(es) those steps see other pairs than on %d"
                " (every other step sees the same pairs). A dataset size divisible by %d avoids it.",
                tails,
                len(train_dataloader.dataset),
                plan.now.global_batch,
                plan.now.processes,
                plan.written_by.processes,
                plan.now.global_batch,
            )

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(checkpoint):
                write_layout(checkpoint, launch_layout(args))
