"""What an SFT run tells its user besides TRL's per-step metrics: the one-screen summary at start (the SimPO run's,
with SFT's lines), the end summary's keys, and real-token throughput with evaluation time left out."""

import logging

from transformers import TrainerCallback

from simpo.core.model import unwrap_model
from simpo.core.reporting import (
    OUTPUT_FILES,
    RULE,
    count_parameters,
    distributed,
    global_batch_size,
    precision,
    short_run_warning,
)

logger = logging.getLogger(__name__)

SFT_END_KEYS = ("loss", "mean_token_accuracy", "entropy")
SFT_OUTPUT_FILES = tuple(f for f in OUTPUT_FILES if f != "dropped_pairs.jsonl") + ("dropped_conversations.jsonl",)
DROPPED_FILE = "dropped_conversations.jsonl"


def start_summary(trainer, counts: dict, drops: dict, state=None) -> str:
    """counts: {"train": {rows, tokens, labelled, longest}, "test": ...} of the tokenised splits (before any
    packing), as simpo.sft.tokenization.tokenize_conversations counts them; drops: their DroppedRow records."""
    args = trainer.args
    model = unwrap_model(trainer.model)
    config = getattr(model, "config", None)
    total, trainable = count_parameters(model)
    dropped = {side: len(drops.get(side, [])) for side in ("train", "test")}
    train, test = counts["train"], counts.get("test", {"rows": 0})
    max_steps = state.max_steps if state is not None and state.max_steps else args.max_steps
    report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    rows = f"packed rows of up to {args.max_length} tokens" if args.packing else "conversations"
    lines = [
        RULE,
        "SFT run",
        f"  model           {getattr(config, '_name_or_path', '?')} ({getattr(config, 'model_type', '?')})",
        f"  parameters      {total:,} total, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)",
        f"  data            {train['rows']:,} train conversations ({dropped['train']} dropped), "
        f"{test['rows']:,} eval conversations ({dropped['test']} dropped)",
        f"  tokens          {train['tokens']:,} train tokens, {train['labelled']:,} of them on assistant turns "
        f"({100 * train['labelled'] / max(train['tokens'], 1):.1f}%, the loss); longest {train['longest']} of "
        f"max_length {args.max_length}",
        f"  global batch    {global_batch_size(args)} {rows} = {args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation x {max(args.world_size, 1)} process(es)",
        f"  steps           {max_steps} optimizer steps, lr {args.learning_rate:g} ({args.lr_scheduler_type.value}"
        f" schedule), logging every {args.logging_steps:g}",
        f"  SFT             loss {args.loss_type} on assistant tokens only, packing "
        + (f"on ({args.packing_strategy})" if args.packing else "off"),
        f"  precision       {precision(args, model)}",
        f"  attention       {getattr(config, '_attn_implementation', '?')}",
        f"  distributed     {distributed(trainer)}",
        f"  output_dir      {args.output_dir} (reporting to {', '.join(map(str, report_to)) or 'nothing'})",
        RULE,
    ]
    return "\n".join(lines)


class SFTRunSummary(TrainerCallback):
    """Prints start_summary on the main process when training begins (the trainer is set after it is built)."""

    def __init__(self, counts: dict, drops: dict):
        self.counts, self.drops, self.trainer = counts, drops, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.trainer is not None:
            print("\n" + start_summary(self.trainer, self.counts, self.drops, state), flush=True)
            if warning := short_run_warning(args, state):
                logger.warning(warning)


def throughput(trainer, train_metrics: dict, checkpoint_state: dict | None) -> dict:
    """Real tokens trained on (num_input_tokens_seen, all processes) per second of training, the evaluations run
    during training left out of the time. A resumed run counts from its checkpoint: train_runtime is this launch's."""
    earlier = checkpoint_state or {}
    tokens = trainer.state.num_input_tokens_seen - earlier.get("num_input_tokens_seen", 0)
    runtime = train_metrics.get("train_runtime")
    if not tokens or not runtime:
        return {}
    session = trainer.state.log_history[len(earlier.get("log_history", [])) :]
    seconds = runtime - sum(h.get("eval_runtime", 0.0) for h in session)
    return {"train_num_tokens": int(tokens), "train_tokens_per_second": round(tokens / max(seconds, 1e-9), 3)}
