"""What an SFT run tells its user besides TRL's per-step metrics: its start summary's own lines (conversations, token
counts, packing), the end summary's keys and files, its curves' panels, and real-token throughput with evaluation
time left out. The frame and the lines every run shares are simpo/reporting/summary.py."""

from simpo.reporting.summary import end_summary, line, output_files, start_summary

SFT_END_KEYS = ("loss", "mean_token_accuracy", "entropy")
DROPPED_FILE = "dropped_conversations.jsonl"
SFT_OUTPUT_FILES = output_files(DROPPED_FILE)
# An SFT run (TRL's metrics) logs no rewards: its own panels (simpo/reporting/curves.py).
SFT_PANELS = {
    "loss (assistant tokens)": ["loss"],
    "token accuracy": ["mean_token_accuracy"],
    "entropy": ["entropy"],
    "learning rate": ["learning_rate"],
}


def sft_start_summary(trainer, counts: dict, drops: dict, state=None, resume_note: str | None = None) -> str:
    """counts: {"train": {rows, tokens, labelled, longest}, "test": ...} of the tokenised splits (before any
    packing), as simpo.sft.tokenization.tokenize_conversations counts them; drops: their DroppedRow records."""
    args = trainer.args
    dropped = {side: len(drops.get(side, [])) for side in ("train", "test")}
    train, test = counts["train"], counts.get("test", {"rows": 0})
    rows = f"packed rows of up to {args.max_length} tokens" if args.packing else "conversations"
    data = [
        line(
            "data",
            f"{train['rows']:,} train conversations ({dropped['train']} dropped), "
            f"{test['rows']:,} eval conversations ({dropped['test']} dropped)",
        ),
        line(
            "tokens",
            f"{train['tokens']:,} train tokens, {train['labelled']:,} of them on assistant turns "
            f"({100 * train['labelled'] / max(train['tokens'], 1):.1f}%, the loss); longest {train['longest']} of "
            f"max_length {args.max_length}",
        ),
    ]
    method = line(
        "SFT",
        f"loss {args.loss_type} on assistant tokens only, packing "
        + (f"on ({args.packing_strategy})" if args.packing else "off"),
    )
    return start_summary(
        trainer, state, "SFT run", data=data, batch_unit=rows, method=[method], attention="", resume_note=resume_note
    )


def sft_end_summary(trainer, metrics: dict, resumed_at: int | None = None) -> str:
    return end_summary(
        trainer,
        metrics,
        title="SFT run",
        keys=SFT_END_KEYS,
        files=SFT_OUTPUT_FILES,
        unit="sequences",
        resumed_at=resumed_at,
    )


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
