"""A run's one-screen summaries: at start, what it will train and how; at its end, time, throughput, final metrics and
the files written. Every recipe's summary has the same frame and shared lines (built here); what is the recipe's own
(SimPO's loss settings and layout, SFT's token counts) it passes in (simpo/train/reporting.py,
simpo/sft/reporting.py). RunSummary prints a recipe's start summary when training begins.
"""

import logging
import os

from transformers import TrainerCallback

from simpo.models.modules import is_quantised, unwrap_model

logger = logging.getLogger(__name__)
RULE = "=" * 78
LABEL_WIDTH = 16


def line(label: str, text: str) -> str:
    """One summary line: the label in its column, then the text."""
    return f"  {label:<{LABEL_WIDTH - 1}} {text}"


def global_batch_size(args) -> int:
    """Pairs (or rows) per optimizer step over all processes: per-device batch * accumulation steps * processes."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)


def count_parameters(model) -> tuple[int, int]:
    """(all, trainable) parameters; under ZeRO-3 a parameter's local numel() is 0, its full size is ds_numel."""
    total = trainable = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        if p.__class__.__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per byte
            n *= 2
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def precision(args, model) -> str:
    dtype = next((p.dtype for p in model.parameters()), None)
    mixed = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "no autocast"
    bits = is_quantised(model)
    quantized = f" ({bits}-bit)" if bits else ""
    tf32 = ", tf32" if args.tf32 else ""
    return f"weights {str(dtype).replace('torch.', '')}{quantized}, {mixed}{tf32}"


def distributed(trainer, resume_note: str | None = None) -> str:
    args = trainer.args
    state = trainer.accelerator.state
    kind = str(getattr(state, "distributed_type", "NO")).split(".")[-1]
    text = f"{kind}, {args.world_size} process(es), device {args.device}"
    plugin = getattr(state, "deepspeed_plugin", None)
    if plugin is not None:
        text += f", DeepSpeed ZeRO-{plugin.zero_stage}"
    if args.activation_checkpointing:
        text += ", gradient checkpointing"
    if resume_note is not None:
        text += f", {resume_note}"
    return text


def tensorboard_dir(trainer) -> str | None:
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback":
            return (
                callback.logging_dir
                or os.environ.get("TENSORBOARD_LOGGING_DIR")
                or os.path.join(trainer.args.output_dir, "runs")
            )
    return None


def start_summary(
    trainer,
    state,
    title: str,
    *,
    data: list[str],
    batch_unit: str,
    method: list[str],
    attention: str,
    speed: list[str] = (),
    resume_note: str | None = None,
) -> str:
    """The start summary: the lines every run shows (model, parameters, global batch, steps, precision, distributed,
    output_dir) around the recipe's own (`data` lines, the global batch's `batch_unit`, the `method` lines, the
    `attention` text and `speed` lines), each of those already a line() but attention."""
    args = trainer.args
    model = unwrap_model(trainer.model)
    config = getattr(model, "config", None)
    total, trainable = count_parameters(model)
    max_steps = state.max_steps if state is not None and state.max_steps else args.max_steps
    report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    lines = [
        RULE,
        title,
        line("model", f"{getattr(config, '_name_or_path', '?')} ({getattr(config, 'model_type', '?')})"),
        line("parameters", f"{total:,} total, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)"),
        *data,
        line(
            "global batch",
            f"{global_batch_size(args)} {batch_unit} = {args.per_device_train_batch_size} per device x "
            f"{args.gradient_accumulation_steps} accumulation x {max(args.world_size, 1)} process(es)",
        ),
        line(
            "steps",
            f"{max_steps} optimizer steps, lr {args.learning_rate:g} ({args.lr_scheduler_type.value} schedule),"
            f" logging every {args.logging_steps:g}",
        ),
        *method,
        line("precision", precision(args, model)),
        line("attention", f"{getattr(config, '_attn_implementation', '?')}{attention}"),
        line("distributed", distributed(trainer, resume_note)),
        *speed,
        line("output_dir", f"{args.output_dir} (reporting to {', '.join(map(str, report_to)) or 'nothing'})"),
        RULE,
    ]
    return "\n".join(lines)


def output_files(*recipe_files: str) -> tuple[str, ...]:
    """The files a finished run leaves in output_dir that the end summary lists (those found); `recipe_files`: the
    recipe's own (its records of the rows it left out or cut)."""
    return (
        "model.safetensors",
        "adapter_model.safetensors",
        "config.json",
        "trainer_state.json",
        "train_results.json",
        "eval_results.json",
        "all_results.json",
        "README.md",
        *recipe_files,
        "training_curves.png",
    )


def end_summary(
    trainer,
    train_metrics: dict | None = None,
    eval_metrics: dict | None = None,
    *,
    title: str,
    keys: tuple,
    files: tuple,
    unit: str,
    resumed_at: int | None = None,
    extra: list[str] = (),
) -> str:
    """Time, throughput, final train and eval metrics (`keys`), the recipe's `extra` lines, and the paths a run wrote
    (those of `files` found). resumed_at: the checkpoint's step a resumed launch started from (time and throughput
    are this launch's)."""
    train_metrics = train_metrics or {}
    history = trainer.state.log_history
    last_train = next((h for h in reversed(history) if "loss" in h), {})
    if eval_metrics is None:
        eval_metrics = next((h for h in reversed(history) if "eval_loss" in h), {})

    def show(metrics: dict, prefix: str) -> str:
        return ", ".join(f"{k} {metrics[prefix + k]:.4g}" for k in keys if prefix + k in metrics) or "none"

    runtime = train_metrics.get("train_runtime")
    steps = trainer.state.global_step
    this_launch = f"{steps - resumed_at} steps (resumed at step {resumed_at})" if resumed_at else f"{steps} steps"
    lines = [
        RULE,
        f"{title} finished",
        line("time", f"{runtime:.1f} s for {this_launch}") if runtime is not None else line("steps", f"{steps}"),
        line(
            "throughput",
            f"{train_metrics.get('train_tokens_per_second', float('nan')):,.0f} real tokens/s (training only), "
            f"{train_metrics.get('train_samples_per_second', float('nan')):.3g} {unit}/s",
        ),
        line("last train log", show(last_train, "")),
        line("final eval", show(eval_metrics, "eval_")),
        *extra,
        line("written to", trainer.args.output_dir),
    ]
    written = [f for f in files if os.path.exists(os.path.join(trainer.args.output_dir, f))]
    lines += [" " * (LABEL_WIDTH + 2) + path for path in written]
    tb = tensorboard_dir(trainer)
    if tb is not None:
        lines.append(line("tensorboard", f"tensorboard --logdir {tb}"))
    lines.append(RULE)
    return "\n".join(lines)


def short_run_warning(args, state) -> str | None:
    """Said at the start (the Trainer knows the run's optimizer steps once its dataloader is built): a launch whose
    steps reach no multiple of logging_steps logs no training metrics at all, which it would otherwise say only at
    its end."""
    every = state.logging_steps
    if str(getattr(args.logging_strategy, "value", args.logging_strategy)) != "steps" or not every:
        return None
    if state.max_steps // every > state.global_step // every:
        return None
    steps = state.max_steps - state.global_step
    return (
        f"This launch trains {steps} optimizer step(s) (to step {state.max_steps}) but logs every {every:g}: no"
        f" training metrics (loss, rewards, ...) will be logged. Set logging_steps to at most {steps} (e.g."
        " --logging_steps=1) to see them."
    )


class RunSummary(TrainerCallback):
    """Prints a recipe's start summary, describe(state), on the main process when training begins, and warns when
    the launch will log no training metrics."""

    def __init__(self, describe):
        self.describe = describe

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print("\n" + self.describe(state), flush=True)
            if warning := short_run_warning(args, state):
                logger.warning(warning)
