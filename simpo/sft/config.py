"""SFTRunConfig: the training group of an SFT run, TRL's SFTConfig (itself a TrainingArguments) with simpo's keys.

simpo tokenises the conversations itself (simpo/sft/tokenization.py: the chat template and BOS/EOS rules of SimPO
training, loss on assistant turns only), so the SFTConfig keys that would redo that differently are refused here,
each with what to use instead, rather than silently ignored.
"""

from dataclasses import dataclass, field
from typing import Literal

from trl import SFTConfig

from simpo.config.arguments import ElasticResumeArguments, finish_training_arguments

# key -> (the value simpo works with, why another one is refused)
REFUSED = {
    "assistant_only_loss": (
        False,
        "the loss is always on assistant tokens only: simpo labels every assistant turn"
        " itself (TRL's option needs {% generation %} markers in the template)",
    ),
    "completion_only_loss": (None, "the loss is always on assistant tokens only; the rows are conversations"),
    "chat_template_path": (None, "set chat_template (a Jinja string) instead, as in the SimPO configs"),
    "dataset_text_field": ("text", "the rows are 'messages' conversations, not text"),
    "dataset_kwargs": (None, "simpo prepares the dataset itself; skip_prepare_dataset would also skip packing"),
    "eos_token": (None, "the tokenizer's EOS ends each conversation, as in SimPO training: change the tokenizer"),
    "pad_token": (None, "deprecated in TRL; pad is the tokenizer's pad token, else its EOS"),
    "model_init_kwargs": (
        None,
        "set the model keys instead (torch_dtype, attn_implementation, model_revision,"
        " trust_remote_code, load_in_4bit/8bit)",
    ),
    "truncation_mode": (
        "keep_start",
        "a long conversation keeps its start (its first turns); keep_end is deprecated in TRL",
    ),
    "packing_strategy": (
        ("bfd", "bfd_split"),
        "packed conversations keep their own positions and attention ('bfd'"
        " cuts a conversation at max_length, 'bfd_split' carries the rest into another row);"
        " 'wrapped' joins conversations into one attention span, so each would attend to those before"
        " it in its row",
    ),
}


def allowed_values(allowed) -> tuple:
    return allowed if isinstance(allowed, tuple) else (allowed,)


def cuts_conversations(args, packed: bool) -> bool:
    """Whether tokenisation cuts a conversation at max_length: not when bfd_split packing carries the rest on."""
    return not (packed and args.packing_strategy == "bfd_split")


@dataclass
class SFTRunConfig(SFTConfig, ElasticResumeArguments):
    # TrainingArguments' defaults, not TRL's, so a key means the same in simpo-sft and simpo-train (TRL's
    # gradient_checkpointing=True would also trip transformers 5's deprecation warning: use activation_checkpointing).
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Recompute activations in the backward pass (saves memory, costs time)."}
    )
    bf16: bool | None = field(default=False, metadata={"help": "bf16 mixed precision (TRL's default would be on)."})
    include_num_input_tokens_seen: str | bool = field(
        default="auto",
        metadata={
            "help": "Count the tokens trained on (num_input_tokens_seen, and the end summary's throughput). auto:"
            " every token of a packed (padding-free) row, the non-padding ones otherwise."
        },
    )
    do_train: bool = field(
        default=True,
        metadata={
            "help": "false: evaluate the model as loaded on the test split (eval_results.json), without training."
        },
    )
    disable_dropout: bool = field(
        default=False, metadata={"help": "Set every dropout (model and LoRA) to 0; off: the model's own dropout."}
    )
    on_degenerate_rows: Literal["drop", "error"] = field(
        default="drop",
        metadata={
            "help": "Conversations that cannot be trained on (an empty assistant reply, or assistant turns all"
            " beyond max_length): drop them, counted in the log and listed in"
            " output_dir/dropped_conversations.jsonl, or stop with an error."
        },
    )

    def __post_init__(self):
        problems = []
        for key, (allowed, why) in REFUSED.items():
            if getattr(self, key) not in allowed_values(allowed):
                only = " or ".join(map(repr, allowed_values(allowed)))
                problems.append(f"{key}={getattr(self, key)!r} is not supported by simpo-sft (only {only}): {why}.")
        if self.use_cache:
            problems.append(
                "use_cache: true is not supported by simpo-sft: training runs without the KV cache (with"
                " it, packed conversations would attend to each other); the saved model's config turns"
                " it on for generation. Remove the key."
            )
        if self.do_predict:
            problems.append(
                "do_predict has no effect: simpo-sft has no prediction step. Evaluate with do_eval, or"
                " with do_train: false to evaluate without training."
            )
        if self.padding_free and not self.packing:
            problems.append(
                "padding_free without packing is not supported by simpo-sft: use packing: true, whose"
                " packed rows are padding-free."
            )
        if self.max_length is None or self.max_length < 2:
            problems.append(f"max_length must be at least 2 (got {self.max_length}): conversations are cut to it.")
        if self.include_num_input_tokens_seen == "auto":
            self.include_num_input_tokens_seen = "all" if self.packing else "non_padding"
        finish_training_arguments(self, problems, super().__post_init__)
