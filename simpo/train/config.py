"""SimPOConfig, the SimPO recipe's training arguments; with the shared model and data groups (simpo/config/arguments.py)
the three argument groups a SimPO run is configured with (SIMPO_ARGUMENTS)."""

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainingArguments

from simpo.config.arguments import DataArguments, ElasticResumeArguments, ModelArguments, finish_training_arguments
from simpo.train.layouts.settings import layout_problems
from simpo.train.liger import liger_problems

logger = logging.getLogger(__name__)

# Where the loss stops measuring preference (docs/configuration.md, "beta and gamma bounds"). The average log-probs are
# fp32, rounded to about 2^-24 of their size, i.e. ~1e-6 for the averages of order 10 real replies reach; the margin
# beta * (difference) carries beta times that, and above beta = 1e6 rounding alone moves the margin by ~1, the width
# of the sigmoid's slope: pairs would be ranked by rounding noise.
BETA_MAX = 1e6
# The target asks avg log p(chosen) - avg log p(rejected) >= gamma_beta_ratio (nats per token). Beyond -ln of fp32's
# smallest normal number (2^-126), 87.3, it asks the rejected reply's tokens to be on average less likely than fp32
# can hold as a normal number, relative to the chosen's: a margin no model can be trained to show.
GAMMA_BETA_RATIO_MAX = 126 * math.log(2)


@dataclass
class SimPOConfig(TrainingArguments, ElasticResumeArguments):
    beta: float = field(default=2.0, metadata={"help": "Reward scale: r = beta * mean response log-prob."})
    gamma_beta_ratio: float = field(default=0.25, metadata={"help": "Target margin gamma = beta * this."})
    sft_weight: float = field(default=0.0, metadata={"help": "Weight of the NLL on chosen responses."})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "Chance a preference label is flipped (the conservative loss), in [0, 0.5)."}
    )
    loss_type: Literal["sigmoid", "hinge"] = field(
        default="sigmoid", metadata={"help": "sigmoid: -log sigmoid(margin - gamma); hinge: relu(1 - margin + gamma)."}
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Every dropout probability set to 0 (SimPO's)."})
    max_length: int = field(default=512, metadata={"help": "Most tokens of prompt plus response per sequence."})
    max_prompt_length: int = field(
        default=128, metadata={"help": "Most prompt tokens kept when prompt plus response exceed max_length."}
    )
    truncation_mode: Literal["keep_end", "keep_start"] = field(
        default="keep_end", metadata={"help": "Which end of a long prompt is kept."}
    )
    label_pad_token_id: int = field(default=-100, metadata={"help": "Label of the positions that are not scored."})
    padding_value: int | None = field(default=None, metadata={"help": "Pad id; defaults to the tokenizer's."})
    generate_during_eval: bool = field(
        default=False,
        metadata={
            "help": "After each evaluation, greedy replies to a few eval prompts in "
            "output_dir/eval_samples.jsonl, beside their chosen and rejected replies."
        },
    )
    model_init_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Further from_pretrained / model config arguments, e.g. {max_position_embeddings: 4096};"
            " those a config key sets (dtype, revision, attn_implementation, ...) are refused."
        },
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenising pairs."})
    fused_logps: bool = field(
        default=True,
        metadata={
            "help": "Log-probs from the hidden states in tiles, never the full-vocabulary logits (much less "
            "memory); False computes them from the model's full logits. The start-up self-check falls back to the "
            "full logits where the tiles differ on the run's device (SIMPO_LOGPS_KERNEL=triton|torch pins a "
            "kernel: a mismatch is then refused)."
        },
    )
    prefix_sharing: bool | Literal["auto"] = field(
        default="auto",
        metadata={
            "help": "One row per pair: [prompt | chosen | rejected], the prompt run once, with a custom 4D mask. "
            "Exact; needs attn_implementation eager or sdpa and a verified family (Llama, Mistral, Gemma-2, Qwen2). "
            "auto: on exactly when the model qualifies (the log says which)."
        },
    )
    padding_free: bool | Literal["auto"] = field(
        default="auto",
        metadata={
            "help": "With prefix_sharing, pack the batch's pairs into one row (no padding, positions restart). "
            "auto: on a GPU, whichever of on and off the start-up self-check measures faster (both must agree "
            "with the plain layout); off elsewhere and without the check."
        },
    )
    flex_attention: bool | Literal["auto"] = field(
        default="auto",
        metadata={
            "help": "Prefix-shared and packed rows with FlexAttention block masks (the kernel skips masked "
            "blocks; no [rows, 1, L, L] mask) instead of dense masks with eager/sdpa; the model's attention is "
            "switched to flex_attention. auto: on GPUs where the start-up self-check measures it faster than dense "
            "masks (both must agree with the plain layout); off on CPU (FlexAttention has no backward there)."
        },
    )
    activation_checkpointing: bool | Literal["auto"] | None = field(
        default="auto",
        metadata={
            "help": "Recompute each block's forward in the backward instead of keeping its activations (less "
            "memory, about a fifth more compute). auto: on only when the run would not fit the GPU's free "
            "memory without it (an estimate the start summary shows); off on CPU. true/false force it.",
            "nargs": "?",
            "const": True,
        },
    )
    liger_kernels: bool | Literal["auto"] = field(
        default="auto",
        metadata={
            "help": "Liger-Kernel's fused RMSNorm, RoPE and SwiGLU/GeGLU for Llama, Mistral, Gemma-2 and Qwen2 "
            "(never its loss: the fused log-probs replace that). auto: on for CUDA runs when liger-kernel is "
            "installed; true: on or an error; false: off."
        },
    )
    self_check: Literal["auto", "always", "off"] = field(
        default="auto",
        metadata={
            "help": "Before the first optimizer step, check the run's fast paths (layout, attention, log-prob "
            "kernel, Liger, precision) against the plain path on a slice of the data on this device; fall back "
            "where one differs and, for settings at auto, keep the fastest that agrees (GPUs). auto: reuse the "
            "decision kept on disk for this device, model, precision, shapes and library versions "
            "(SIMPO_SELF_CHECK_CACHE); always: check again; off: no check, the first option of each."
        },
    )
    max_tokens_per_row: int | None = field(
        default=None,
        metadata={
            "help": "With padding_free: pack pairs into rows of at most this many tokens (first fit, longest "
            "pair first; a longer pair gets a row of its own) instead of one row per batch, which bounds the "
            "[rows, 1, L, L] attention mask."
        },
    )
    on_degenerate_pairs: Literal["drop", "error"] = field(
        default="drop",
        metadata={
            "help": "Pairs that cannot be trained on (identical, empty, or a response truncated to nothing):"
            " drop them, counted in the log and listed in output_dir/dropped_pairs.jsonl, or stop with an"
            " error."
        },
    )
    do_train: bool = field(
        default=True,
        metadata={
            "help": "false: evaluate the model as loaded on the test split (eval_results.json), without training."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay false: the columns are the trainer's, not forward arguments."}
    )

    @property
    def gamma(self) -> float:
        """SimPO's target reward margin: the loss asks r_w - r_l to exceed gamma = beta * gamma_beta_ratio."""
        return self.beta * self.gamma_beta_ratio

    def __post_init__(self):
        if self.activation_checkpointing == "auto" and self.gradient_checkpointing is not None:
            self.activation_checkpointing = None  # the deprecated alias, set: transformers takes it over
        problems = loss_problems(self) + key_problems(self) + layout_problems(self) + liger_problems(self)
        finish_training_arguments(self, problems, super().__post_init__)
        if self.loss_type == "hinge" and self.label_smoothing > 0:
            logger.warning("label_smoothing=%s has no effect with loss_type=hinge.", self.label_smoothing)
        if self.gamma_beta_ratio < 0:
            logger.warning(
                "gamma_beta_ratio=%s is negative: the loss then asks the chosen reward to exceed the"
                " rejected one by less than zero; the paper searches 0 to 1.",
                self.gamma_beta_ratio,
            )
        if self.beta < 1:
            logger.warning(
                "beta=%s is a DPO-scale value; SimPO's rewards are length-normalised and the paper uses beta 2 to 10.",
                self.beta,
            )


def loss_problems(args: SimPOConfig) -> list[str]:
    """The loss settings SimPO cannot train with, each naming its key (the bounds: docs/configuration.md)."""
    problems = [
        f"{name} must be a finite number (got {getattr(args, name)})."
        for name in ("beta", "gamma_beta_ratio", "label_smoothing", "sft_weight")
        if not math.isfinite(getattr(args, name))
    ]
    if problems:
        return problems
    if args.beta <= 0:
        problems.append(f"beta must be positive (got {args.beta}); the paper uses 2 to 10.")
    if args.beta > BETA_MAX:
        problems.append(
            f"beta={args.beta:g} is above {BETA_MAX:g}, where the loss stops measuring preference: the fp32"
            " average log-probs are rounded by ~1e-6, and beta times that already spans the sigmoid's slope. The"
            " paper uses 2 to 10."
        )
    if abs(args.gamma_beta_ratio) > GAMMA_BETA_RATIO_MAX:
        problems.append(
            f"gamma_beta_ratio={args.gamma_beta_ratio:g} asks the chosen reply's average token log-prob to beat"
            f" the rejected one's by that many nats; above {GAMMA_BETA_RATIO_MAX:.1f} (-ln of fp32's smallest"
            " normal number) no model can show that margin, and the loss only grows. The paper uses 0 to 1."
        )
    if not 0 <= args.label_smoothing < 0.5:
        problems.append(f"label_smoothing must be in [0, 0.5) (got {args.label_smoothing}).")
    if args.sft_weight < 0:
        problems.append(f"sft_weight must be >= 0 (got {args.sft_weight}).")
    return problems


def key_problems(args: SimPOConfig) -> list[str]:
    """TrainingArguments keys that would do nothing in a SimPO run, and the sequence lengths."""
    problems = []
    if args.use_cache:
        problems.append(
            "use_cache: true has no effect: training runs without the KV cache (the saved model's"
            " config turns it on for generation). Remove the key."
        )
    if args.do_predict:
        problems.append(
            "do_predict has no effect: simpo has no prediction step. Evaluate with do_eval, or with"
            " do_train: false to evaluate without training."
        )
    if args.remove_unused_columns:
        problems.append(
            "remove_unused_columns must be false: simpo's collator reads the tokenised pair columns, which are not"
            " arguments of the model's forward. Remove the key."
        )
    if not 1 <= args.max_prompt_length < args.max_length:
        problems.append(
            f"max_prompt_length ({args.max_prompt_length}) must be at least 1 and below max_length"
            f" ({args.max_length}): a longer prompt would leave its responses no tokens. Set it between 1 and"
            " max_length - 1."
        )
    return problems


SIMPO_ARGUMENTS = (ModelArguments, DataArguments, SimPOConfig)
