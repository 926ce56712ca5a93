"""What a SimPO run shows its user: its start summary's own lines (the pairs and their drops, the loss settings, the
layout and kernels, the speed choices the trainer made), the end summary's metrics and files, and the panels of its
training curves. The frame and the lines every run shares are simpo/reporting/summary.py."""

from simpo.data.validation import CUTS_FILE, cut_summary
from simpo.kernels.tile_cache import cache_path
from simpo.reporting.summary import end_summary, line, output_files, start_summary
from simpo.train.self_check import decision_lines

SIMPO_END_KEYS = (
    "loss",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/margin_over_gamma",
    "lengths/chosen",
    "lengths/rejected",
)
OUTPUT_FILES = output_files("dropped_pairs.jsonl", CUTS_FILE)

# Panel title -> metric names as logged in train entries; the eval_ version of each goes on the same panel.
RUN_PANELS = {
    "loss": ["loss"],
    "rewards: chosen vs rejected": ["rewards/chosen", "rewards/rejected"],
    "reward margin (chosen - rejected)": ["rewards/margins"],
    "accuracy and share of margins > gamma": ["rewards/accuracies", "rewards/margin_over_gamma"],
    "response length (tokens)": ["lengths/chosen", "lengths/rejected"],
    "learning rate": ["learning_rate"],
}
# simpo-plot over several runs (a sweep): panel title -> the eval metric, one line per run.
COMPARE_PANELS = {
    "eval loss": "eval_loss",
    "eval rewards/accuracies": "eval_rewards/accuracies",
    "eval rewards/margins": "eval_rewards/margins",
    "eval rewards/margin_over_gamma": "eval_rewards/margin_over_gamma",
    "eval rewards/chosen": "eval_rewards/chosen",
    "eval rewards/rejected": "eval_rewards/rejected",
}


def simpo_start_summary(trainer, state=None, resume_note: str | None = None) -> str:
    """`trainer`: a SimPOTrainer (its pairs, drops and cuts, layout, checkpointing and Liger choices); the truncation
    line counts the prompts and replies cut to max_length per split (the rows: output_dir/CUTS_FILE)."""
    args = trainer.args
    drops = {name: len(records) for name, records in trainer.dropped_pairs.items()}
    train_rows = len(trainer.train_dataset) if trainer.train_dataset is not None else 0
    eval_rows = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    data = line(
        "data",
        f"{train_rows:,} train pairs ({drops.get('train', 0)} dropped), "
        f"{eval_rows:,} eval pairs ({drops.get('eval', 0)} dropped)",
    )
    cuts = trainer.truncated_pairs
    sides = [f"train {cut_summary(cuts.get('train', []), train_rows)}"]
    if trainer.eval_dataset is not None:
        sides.append(f"eval {cut_summary(cuts.get('eval', []), eval_rows)}")
    listed = f"; listed in {CUTS_FILE}" if any(cuts.values()) else ""
    truncation = line("truncation", f"{', '.join(sides)} at max_length {args.max_length}{listed}")
    method = line(
        "SimPO",
        f"beta {args.beta:g}, gamma {args.gamma:g} (gamma_beta_ratio {args.gamma_beta_ratio:g}), loss"
        f" {args.loss_type}, sft_weight {args.sft_weight:g}",
    )
    attention = f", layout {trainer.layout.name}" + (", fused log-probs" if args.fused_logps else "")
    speed = [
        line("checkpointing", f"{'on' if trainer.checkpointing.enabled else 'off'} ({trainer.checkpointing.reason})"),
        line("liger kernels", trainer.liger),
        *self_check_lines(trainer),
    ]
    return start_summary(
        trainer,
        state,
        "SimPO run",
        data=[data, truncation],
        batch_unit="pairs",
        method=[method],
        attention=attention,
        speed=speed,
        resume_note=resume_note,
    )


def self_check_lines(trainer) -> list[str]:
    """The start-up self-check's decision (simpo/train/self_check/): how it was made, the path that runs, each
    path it rejected with its figures; nothing before it ran."""
    decision = getattr(getattr(trainer, "self_check", None), "decision", None)
    if decision is None:
        return []
    first, *rest = decision_lines(decision)
    return [line("self-check", first), *(line("", text) for text in rest)]


def self_check_seconds(trainer) -> list[str]:
    """The end summary's account of what the self-check cost this launch."""
    decision = getattr(getattr(trainer, "self_check", None), "decision", None)
    if decision is None:
        return []
    how = decision.source
    if how == "checked":
        how = f"{len(decision.rows)} path(s) checked against the plain one"
    return [line("self-check", f"{decision.seconds:.2f} s: {how}")]


def warmup_lines(ledger) -> list[str]:
    """The Triton log-prob path's tile choice in this run (a KernelLedger): seconds spent measuring, and what came
    from disk; nothing when no tile was chosen (CPU runs, the torch tiles)."""
    if not (ledger.measured or ledger.reused):
        return []
    return [
        line(
            "kernel warm-up",
            f"{ledger.warmup_seconds:.1f} s measuring log-prob tiles for {ledger.measured} shape(s),"
            f" {ledger.reused} reused from {cache_path() or 'memory'}",
        )
    ]


def simpo_end_summary(trainer, train_metrics: dict, resumed_at: int | None = None) -> str:
    return end_summary(
        trainer,
        train_metrics,
        title="SimPO run",
        keys=SIMPO_END_KEYS,
        files=OUTPUT_FILES,
        unit="pairs",
        resumed_at=resumed_at,
        extra=self_check_seconds(trainer) + warmup_lines(trainer.kernels),
    )
