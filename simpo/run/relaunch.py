"""The relaunch rule: a relaunch of an output_dir trains what it records.

Each checkpoint records what shaped its trajectory (simpo/run/record.py: the recipe, every setting that can change
what is trained, the training data's fingerprint as read), and so does a finished run's output_dir. A relaunch is
compared with the record of what it would continue, before anything loads (the settings, in start_run) and once the
data is read, before the model loads (the data):

- the same: it resumes (or, for a finished run, says there is nothing left to train and keeps it);
- different: refused, listing the differences and the two ways out: another output_dir (train the new settings from
  step 0), or `resume_with_changes: true`, which continues the checkpoint with the new settings applied for real
  from the resumed step on (the learning rate and its schedule included: apply_optimizer_settings), recorded in
  output_dir/run_history.jsonl and the model card.

Settings that cannot change what is trained (FREE_KEYS: logging, save and eval cadence, report_to, names, workers,
the exact fast paths and memory savers) may differ silently. The global batch is elastic resume's
(simpo/run/elastic.py, allow_global_batch_change). What a checkpoint cannot continue with (STRUCTURE_KEYS: another
model, adapter layout or optimizer; its weights and optimizer state are the old ones) is refused either way.
"""

import datetime
import json
import logging
import os
from dataclasses import dataclass, field

from accelerate import PartialState
from transformers import TrainerCallback

from simpo.data.mixer import content_fingerprint
from simpo.errors import ConfigError
from simpo.run.record import (
    RECORD_FILE,
    final_files_problem,
    is_deepspeed_checkpoint,
    read_record,
    record_digests,
    write_record,
)
from simpo.run.resume import checkpoint_state

logger = logging.getLogger(__name__)

HISTORY_FILE = "run_history.jsonl"
DATA_KEY = "train data (the fingerprint of its rows as read)"
# Keys that cannot change what is trained, only what is logged, saved, evaluated, named or how fast (the fast paths
# give the plain path's numbers up to rounding). The data keys are here because the data's fingerprint is compared
# instead: the same rows read from another path are the same data.
FREE_KEYS = frozenset(
    {
        # where and what is written, logged, evaluated, pushed
        "output_dir",
        "run_name",
        "project",
        "report_to",
        "disable_tqdm",
        "do_eval",
        "do_predict",
        "per_device_eval_batch_size",
        "bf16_full_eval",
        "fp16_full_eval",
        "batch_eval_metrics",
        "include_for_metrics",
        "prediction_loss_only",
        "generate_during_eval",
        "eval_packing",
        "push_to_hub",
        "resume_from_checkpoint",
        "skip_memory_metrics",
        "include_num_input_tokens_seen",
        "enable_jit_checkpoint",
        "restore_callback_states_from_checkpoint",
        # how fast and in how much memory
        "dataloader_num_workers",
        "dataloader_persistent_workers",
        "dataloader_pin_memory",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
        "preprocessing_num_workers",
        "dataset_num_proc",
        "ddp_timeout",
        "ddp_bucket_cap_mb",
        "ddp_find_unused_parameters",
        "ddp_static_graph",
        "torch_empty_cache_steps",
        "local_rank",
        "activation_checkpointing",
        "activation_checkpointing_kwargs",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "activation_offloading",
        "attn_implementation",
        "fused_logps",
        "prefix_sharing",
        "padding_free",
        "flex_attention",
        "liger_kernels",
        "max_tokens_per_row",
        "pad_to_multiple_of",
        # what is done with rows that cannot be trained on: the same rows train either way, or the run stops
        "on_degenerate_pairs",
        "on_degenerate_rows",
        # the global batch: elastic resume's (another process count keeps it; changing it is allowed there)
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "allow_global_batch_change",
        "resume_with_changes",
        # the data: its fingerprint is compared
        "dataset_mixer",
        "dataset_splits",
        "dataset_configs",
    }
)
FREE_PREFIXES = ("logging_", "save_", "eval_", "hub_", "trackio_", "log_")
# What a checkpoint cannot continue with: its weights and optimizer state belong to the model, adapters and optimizer
# it was trained with, so the new ones would never be trained (or not load at all).
STRUCTURE_KEYS = (
    "recipe",
    "model_name_or_path",
    "model_revision",
    "tokenizer_name_or_path",
    "use_peft",
    "lora_r",
    "lora_target_modules",
    "lora_modules_to_save",
    "load_in_4bit",
    "load_in_8bit",
    "optim",
    "optim_args",
    "optim_target_modules",
)


def is_free(key: str) -> bool:
    return key in FREE_KEYS or key.startswith(FREE_PREFIXES)


def trajectory_settings(values: dict, recipe: str) -> dict:
    """The settings of `values` (run_config_values) that shape what is trained, as JSON reads them back, with the
    recipe (simpo-train, simpo-sft)."""
    plain = json.loads(json.dumps(values, default=str))
    return {"recipe": recipe, **{key: value for key, value in plain.items() if not is_free(key)}}


def differences(before: dict, now: dict) -> list[tuple[str, object, object]]:
    """(key, recorded value, this launch's) for each setting that differs; a key only one side has counts as unset
    on the other."""
    return [
        (key, before.get(key), now.get(key))
        for key in [*now, *(k for k in before if k not in now)]
        if before.get(key) != now.get(key)
    ]


@dataclass
class Relaunch:
    """How a launch stands to what it continues (Launch.relaunch): its settings; the record it was compared with (a
    checkpoint's, or a finished run's in output_dir); the changes it continues with (resume_with_changes); whether
    output_dir holds this very run finished; the train data's fingerprint once read."""

    settings: dict
    record: dict | None = None
    changes: list = field(default_factory=list)
    finished: bool = False
    data: str | None = None

    @property
    def step(self) -> int:
        return (self.record or {}).get("step", 0)


def record_step(checkpoint: str | None) -> int | None:
    return (checkpoint_state(checkpoint) or {}).get("global_step")


def compare_settings(args, settings: dict, checkpoint: str | None) -> Relaunch:
    """This launch's settings against the record of what it continues: a finished run in output_dir (when its final
    files verify and it is not older than the checkpoint), else the checkpoint. Raises ConfigError for a difference
    it may not continue with; a launch that trains nothing (do_train: false) is not compared."""
    relaunch = Relaunch(settings)
    if not args.do_train:
        return relaunch
    step = record_step(checkpoint)
    final = read_record(args.output_dir)
    if final is not None:
        problem = final_files_problem(args.output_dir, final)
        if problem is None and (step is None or final["step"] >= step):
            relaunch.record, relaunch.finished = final, True
            judge(args, relaunch, differences(final["settings"], settings), checkpoint)
            return relaunch
        if problem is not None:
            logger.warning(
                "The final model in %s does not verify (%s): %s.",
                args.output_dir,
                problem,
                f"rewriting it from {checkpoint}, the last complete checkpoint"
                if checkpoint
                else "no checkpoint verifies, so the run trains again from step 0",
            )
    if checkpoint is None:
        return relaunch
    relaunch.record = read_record(checkpoint)
    if relaunch.record is None:
        logger.warning(
            "%s has no %s (the record of what it was trained with): this launch's settings cannot be compared with"
            " it, and are trusted to be the same.",
            checkpoint,
            RECORD_FILE,
        )
        return relaunch
    judge(args, relaunch, differences(relaunch.record["settings"], settings), checkpoint)
    return relaunch


def check_data(launch, datasets) -> bool:
    """The data half of the rule, once the data is read (before the model loads): the train split's fingerprint
    against the record's. Returns True when output_dir holds this run finished with these settings and data: nothing
    is left to train (said here; its outputs are kept)."""
    relaunch, args = launch.relaunch, launch.args
    if not args.do_train:
        return False
    relaunch.data = content_fingerprint(datasets["train"])
    before = (relaunch.record or {}).get("data")
    if before is not None and before != relaunch.data:
        judge(args, relaunch, [(DATA_KEY, before, relaunch.data)], launch.checkpoint)
    if relaunch.finished:
        more = (
            "raise max_steps or num_train_epochs and set resume_with_changes: true"
            if launch.checkpoint
            else "use another output_dir (it saved no checkpoint to continue from)"
        )
        logger.warning(
            "Nothing left to train: %s holds this run, finished at step %d with these settings and data (kept). To"
            " train more, %s; to start afresh, use another output_dir.",
            args.output_dir,
            relaunch.step,
            more,
        )
    return relaunch.finished


def listed(changes) -> str:
    return ", ".join(f"{key}: {before!r} -> {now!r}" for key, before, now in changes)


def judge(args, relaunch: Relaunch, changes: list, checkpoint: str | None) -> None:
    """Accept `changes` (resume_with_changes, with a checkpoint to continue) or raise the refusal that lists them
    with the ways out."""
    if not changes:
        return
    if relaunch.finished:
        what = f"The finished run in {args.output_dir} (step {relaunch.step})"
    else:
        what = f"{checkpoint} (step {relaunch.step})"
    other = "data" if [key for key, _, _ in changes] == [DATA_KEY] else "settings"
    head = f"{what} was trained with other {other} than this launch's: {listed(changes)}."
    fresh = "Give another output_dir to train with these settings from step 0"
    structural = [key for key, _, _ in changes if key in STRUCTURE_KEYS]
    if structural:
        raise ConfigError(
            f"{head} A relaunch cannot continue with another {', '.join(structural)}: the checkpoint holds the"
            f" weights and optimizer state of the run it saved, which the new ones would never train. {fresh}."
        )
    if checkpoint is None:
        raise ConfigError(
            f'{head} It saved no checkpoint (save_strategy: "no"), so nothing can continue it with them: they'
            f" would train from step 0 over its model. {fresh} (or remove {args.output_dir} to retrain it there)."
        )
    step = record_step(checkpoint)
    if not args.resume_with_changes:
        finished = " (the final model, results and card are rewritten at the end)" if relaunch.finished else ""
        raise ConfigError(
            f"{head} A relaunch resumes only what its checkpoint was trained with. {fresh}, or set"
            f" resume_with_changes: true to continue {checkpoint} from step {step} with them: they apply from step"
            f" {step + 1} on, the learning rate and its schedule included{finished}, and"
            f" {os.path.join(args.output_dir, HISTORY_FILE)} and the model card record the change."
        )
    relaunch.changes += changes
    logger.warning(
        "resume_with_changes: continuing %s from step %d with %s; they apply from step %d on%s.",
        checkpoint,
        step,
        listed(changes),
        step + 1,
        f" (the run had finished at step {relaunch.step}: it trains on to the new settings' last step and rewrites"
        " its final model, results and card)"
        if relaunch.finished
        else "",
    )
    relaunch.finished = False


def record_launch(launch) -> None:
    """One line of output_dir/run_history.jsonl per launch that trains (main process): where it started and, when it
    continued with other settings, what changed."""
    relaunch = launch.relaunch
    step = record_step(launch.checkpoint) or 0
    entry = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": launch.prog,
        "step": step,
        "resumed_from": launch.checkpoint,
        "changes": {key: [before, now] for key, before, now in relaunch.changes},
    }
    with open(os.path.join(launch.args.output_dir, HISTORY_FILE), "a") as f:
        f.write(json.dumps(entry) + "\n")


def history_for_card(output_dir: str) -> str:
    """The model card's section on the settings changed during training (empty when none changed)."""
    try:
        with open(os.path.join(output_dir, HISTORY_FILE)) as f:
            entries = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return ""
    changed = [entry for entry in entries if entry.get("changes")]
    if not changed:
        return ""
    lines = [
        f"- from step {entry['step'] + 1} (resumed from `{os.path.basename(entry['resumed_from'] or '')}`): "
        + ", ".join(f"`{key}` {before!r} -> {now!r}" for key, (before, now) in entry["changes"].items())
        for entry in changed
    ]
    return (
        "\n\n## Settings changed during training\n\nThis model was trained in several launches, and these continued"
        f" with other settings than the ones before them ({HISTORY_FILE} in the run's folder):\n\n"
        + "\n".join(lines)
        + "\n"
    )


def innermost(wrapped, attribute: str):
    """The object inside accelerate's and DeepSpeed's optimizer and scheduler wrappers (`.optimizer`, `.scheduler`)."""
    while getattr(wrapped, attribute, None) is not None:
        wrapped = getattr(wrapped, attribute)
    return wrapped


def apply_optimizer_settings(args, optimizer, scheduler) -> list[float]:
    """Make a resumed optimizer and schedule follow this launch's settings: the Trainer built the schedule for them,
    then loaded the checkpoint's state, whose base learning rate and optimizer hyperparameters (Adam's betas and
    epsilon, weight decay) are the old run's. The schedule keeps its step count, so the learning rate from here on is
    the new schedule's at this step, as a run with these settings from the start would have it. Returns the
    learning rates set."""
    from torch.optim.lr_scheduler import LambdaLR

    groups = optimizer.param_groups
    for index, group in enumerate(groups):
        if "betas" in group:
            group["betas"] = (args.adam_beta1, args.adam_beta2)
        if "eps" in group:
            group["eps"] = args.adam_epsilon
        if "weight_decay" in group and len(groups) == 2:  # the Trainer's groups: decayed, then not decayed
            group["weight_decay"] = args.weight_decay if index == 0 else 0.0
    scheduler = innermost(scheduler, "scheduler")
    scheduler.base_lrs = [args.learning_rate] * len(groups)
    if isinstance(scheduler, LambdaLR):  # every schedule transformers builds, but reduce_lr_on_plateau
        rates = [base * rate(scheduler.last_epoch) for base, rate in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    else:
        rates = list(scheduler.base_lrs)
    for group, rate in zip(groups, rates):
        group["lr"], group["initial_lr"] = rate, args.learning_rate
    scheduler._last_lr = rates
    return rates


class RelaunchRecord(TrainerCallback):
    """Writes each checkpoint's record (main process, on save; for a DeepSpeed checkpoint with the sha256 of its
    files, so add it after every callback that writes into the checkpoint), and applies a resume_with_changes
    launch's optimizer settings once the Trainer has loaded the checkpoint."""

    def __init__(self, launch):
        self.launch = launch

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if self.launch.relaunch.changes and self.launch.checkpoint is not None and optimizer is not None:
            rates = apply_optimizer_settings(args, optimizer, lr_scheduler)
            logger.info("resume_with_changes: learning rate from step %d: %s", state.global_step + 1, rates[0])

    def on_save(self, args, state, control, **kwargs):
        # every process writes its own files into the checkpoint (rng_state_<rank>.pth, ZeRO shards) and returns
        # from the save on its own: the record's digests wait for the last of them
        PartialState().wait_for_everyone()
        if not state.is_world_process_zero:
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(checkpoint):
            record = self.launch.record(state.global_step)
            if is_deepspeed_checkpoint(checkpoint):
                record = record_digests(checkpoint, record)
            write_record(checkpoint, record)
