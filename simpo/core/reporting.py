"""What a run tells its user besides the per-step metrics: a one-screen summary at start and at end, and throughput.

RunSummary (a TrainerCallback SimPOTrainer adds to itself) prints the start summary on the main process;
end_summary() is printed by simpo/train/recipe.py once everything is written. TokenThroughput counts the real tokens the
model ran on (as the plain layout runs them), per second of training with evaluation time left out.
"""

import logging
import os
import time

import torch
from transformers import TrainerCallback

from simpo.core.model import unwrap_model
from simpo.data.validation import CUTS_FILE, cut_summary

logger = logging.getLogger(__name__)
RULE = "=" * 78


def global_batch_size(args) -> int:
    """Pairs per optimizer step over all processes: per-device batch * accumulation steps * processes."""
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
    quantized = (
        " (4-bit)"
        if getattr(model, "is_loaded_in_4bit", False)
        else (" (8-bit)" if getattr(model, "is_loaded_in_8bit", False) else "")
    )
    tf32 = ", tf32" if args.tf32 else ""
    return f"weights {str(dtype).replace('torch.', '')}{quantized}, {mixed}{tf32}"


def distributed(trainer) -> str:
    args = trainer.args
    state = trainer.accelerator.state
    kind = str(getattr(state, "distributed_type", "NO")).split(".")[-1]
    text = f"{kind}, {args.world_size} process(es), device {args.device}"
    plugin = getattr(state, "deepspeed_plugin", None)
    if plugin is not None:
        text += f", DeepSpeed ZeRO-{plugin.zero_stage}"
    if args.activation_checkpointing:
        text += ", gradient checkpointing"
    if getattr(args, "elastic_resume", None) is not None:
        text += f", {args.elastic_resume.note}"
    return text


def speed_lines(trainer) -> list[str]:
    """The speed choices a trainer made at start (checkpointing and why, fused kernels), where it records them."""
    lines = []
    checkpointing = getattr(trainer, "checkpointing", None)
    if checkpointing is not None:
        lines.append(f"  checkpointing   {'on' if checkpointing.enabled else 'off'} ({checkpointing.reason})")
    liger = getattr(trainer, "liger", None)
    if liger is not None:
        lines.append(f"  liger kernels   {liger}")
    return lines


def warmup_lines() -> list[str]:
    """The Triton log-prob path's tile choice in this process: seconds spent measuring, and what came from disk."""
    from simpo.kernels.tile_cache import WARMUP, cache_path

    if not (WARMUP["measured"] or WARMUP["reused"]):
        return []
    return [
        f"  kernel warm-up  {WARMUP['seconds']:.1f} s measuring log-prob tiles for {WARMUP['measured']} shape(s),"
        f" {WARMUP['reused']} reused from {cache_path() or 'memory'}"
    ]


def tensorboard_dir(trainer) -> str | None:
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback":
            return (
                callback.logging_dir
                or os.environ.get("TENSORBOARD_LOGGING_DIR")
                or os.path.join(trainer.args.output_dir, "runs")
            )
    return None


def start_summary(trainer, state=None) -> str:
    args = trainer.args
    model = unwrap_model(trainer.model)
    config = getattr(model, "config", None)
    total, trainable = count_parameters(model)
    drops = {name: len(records) for name, records in trainer.dropped_pairs.items()}
    train_rows = len(trainer.train_dataset) if trainer.train_dataset is not None else 0
    eval_rows = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    max_steps = state.max_steps if state is not None and state.max_steps else args.max_steps
    report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    lines = [
        RULE,
        "SimPO run",
        f"  model           {getattr(config, '_name_or_path', '?')} ({getattr(config, 'model_type', '?')})",
        f"  parameters      {total:,} total, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)",
        f"  data            {train_rows:,} train pairs ({drops.get('train', 0)} dropped), "
        f"{eval_rows:,} eval pairs ({drops.get('eval', 0)} dropped)",
        truncation_line(trainer, train_rows, eval_rows),
        f"  global batch    {global_batch_size(args)} pairs = {args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation x {max(args.world_size, 1)} process(es)",
        f"  steps           {max_steps} optimizer steps, lr {args.learning_rate:g} ({args.lr_scheduler_type.value}"
        f" schedule), logging every {args.logging_steps:g}",
        f"  SimPO           beta {args.beta:g}, gamma {args.gamma:g} "
        f"(gamma_beta_ratio {args.gamma_beta_ratio:g}), loss {args.loss_type}, sft_weight {args.sft_weight:g}",
        f"  precision       {precision(args, model)}",
        f"  attention       {getattr(config, '_attn_implementation', '?')}, layout {trainer.layout.name}"
        + (", fused log-probs" if getattr(args, "fused_logps", False) else ""),
        f"  distributed     {distributed(trainer)}",
        *speed_lines(trainer),
        f"  output_dir      {args.output_dir} (reporting to {', '.join(map(str, report_to)) or 'nothing'})",
        RULE,
    ]
    return "\n".join(lines)


def truncation_line(trainer, train_rows: int, eval_rows: int) -> str:
    """How many prompts and replies truncation cut to max_length, per split (the rows: output_dir/CUTS_FILE)."""
    cuts = getattr(trainer, "truncated_pairs", {})
    sides = [f"train {cut_summary(cuts.get('train', []), train_rows)}"]
    if trainer.eval_dataset is not None:
        sides.append(f"eval {cut_summary(cuts.get('eval', []), eval_rows)}")
    listed = f"; listed in {CUTS_FILE}" if any(cuts.values()) else ""
    return f"  truncation      {', '.join(sides)} at max_length {trainer.args.max_length}{listed}"


OUTPUT_FILES = (
    "model.safetensors",
    "adapter_model.safetensors",
    "config.json",
    "trainer_state.json",
    "train_results.json",
    "eval_results.json",
    "all_results.json",
    "README.md",
    "dropped_pairs.jsonl",
    CUTS_FILE,
    "training_curves.png",
)


def plot_curves(trainer) -> str | None:
    """On the main process, draw output_dir/training_curves.png; a failure warns and training still succeeds."""
    if not trainer.accelerator.is_main_process:
        return None
    try:
        from simpo.core.plot import CURVES_FILE, plot_run

        path = os.path.join(trainer.args.output_dir, CURVES_FILE)
        plot_run(trainer.args.output_dir, path)
        return path
    except ValueError as error:  # nothing to plot: simpo-plot would say the same
        logger.warning("No training curves: %s", error)
    except Exception as error:  # plotting must never fail a finished run
        logger.warning(
            "Could not plot the training curves (%s: %s); try simpo-plot %s",
            type(error).__name__,
            error,
            trainer.args.output_dir,
        )
    return None


SIMPO_END_KEYS = (
    "loss",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/margin_over_gamma",
    "lengths/chosen",
    "lengths/rejected",
)


def end_summary(
    trainer,
    train_metrics: dict | None = None,
    eval_metrics: dict | None = None,
    written: list[str] | None = None,
    title: str = "SimPO run",
    keys: tuple = SIMPO_END_KEYS,
    files: tuple = OUTPUT_FILES,
    unit: str = "pairs",
    resumed_at: int | None = None,
) -> str:
    """Time, throughput, final train and eval metrics (`keys`), and the paths a run wrote (those of `files` found).
    resumed_at: the checkpoint's step a resumed launch started from (time and throughput are this launch's)."""
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
        f"  time            {runtime:.1f} s for {this_launch}" if runtime is not None else f"  steps           {steps}",
        f"  throughput      {train_metrics.get('train_tokens_per_second', float('nan')):,.0f} real tokens/s "
        f"(training only), {train_metrics.get('train_samples_per_second', float('nan')):.3g} {unit}/s",
        f"  last train log  {show(last_train, '')}",
        f"  final eval      {show(eval_metrics, 'eval_')}",
        f"  written to      {trainer.args.output_dir}",
    ]
    lines += warmup_lines()
    if written is None:
        written = [f for f in files if os.path.exists(os.path.join(trainer.args.output_dir, f))]
    lines += [f"                  {path}" for path in written]
    tb = tensorboard_dir(trainer)
    if tb is not None:
        lines.append(f"  tensorboard     tensorboard --logdir {tb}")
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
    """Prints start_summary(trainer) on the main process when training begins."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print("\n" + start_summary(self.trainer, state), flush=True)
            if warning := short_run_warning(args, state):
                logger.warning(warning)


class TokenThroughput:
    """Real tokens trained on per second. add() a micro-batch's count (a tensor: no sync); window() and total()
    reduce over processes, so every process must call them at the same points (Trainer.log runs on all of them)."""

    def __init__(self):
        self.pending = None  # tokens since the last window, this process, a tensor on the device
        self.window_start = None
        self.eval_seconds = 0.0
        self.total_tokens = 0
        self.total_seconds = 0.0

    def add(self, tokens: torch.Tensor) -> None:
        if self.window_start is None:
            self.window_start = time.perf_counter()
        self.pending = tokens if self.pending is None else self.pending + tokens

    def exclude(self, seconds: float) -> None:
        """Evaluation time inside the current window (from eval_runtime)."""
        if self.window_start is not None:
            self.eval_seconds += seconds

    def window(self, accelerator) -> dict:
        """tokens/per_second over the micro-batches since the last call; empty when there were none."""
        if self.pending is None:
            return {}
        tokens = int(accelerator.reduce(self.pending.detach().to(torch.int64), reduction="sum").item())
        now = time.perf_counter()
        seconds = max(now - self.window_start - self.eval_seconds, 1e-9)
        self.total_tokens += tokens
        self.total_seconds += seconds
        self.pending, self.window_start, self.eval_seconds = None, now, 0.0
        return {"tokens/per_second": tokens / seconds}

    def total(self, accelerator) -> dict:
        """Run totals for the end-of-training metrics (train_results.json)."""
        self.window(accelerator)
        if not self.total_tokens:
            return {}
        return {
            "train_num_tokens": self.total_tokens,
            "train_tokens_per_second": round(self.total_tokens / self.total_seconds, 3),
        }
