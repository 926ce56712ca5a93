"""The argument groups every recipe and command shares: the model (ModelArguments) and the data (DataArguments), and the
resume keys both training recipes take (ElasticResumeArguments). Each recipe adds its own training arguments
(simpo/train/config.py, simpo/sft/config.py, simpo/pipeline/config.py)."""

import math
import os
from dataclasses import dataclass, field, fields
from typing import Literal

from simpo.errors import ConfigError


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local folder of the model."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Defaults to model_name_or_path."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with the model (off)."})
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = field(
        default=None, metadata={"help": "Weights dtype; None keeps the checkpoint's default loading."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa or flash_attention_2 (falls back to sdpa when missing)."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (use_peft)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator: updates are scaled by alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Forced to 0 when disable_dropout is on."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names LoRA adapts; None: peft's default for the architecture."}
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full and saved beside the adapters (e.g. lm_head)."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the weights 8-bit (bitsandbytes)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the weights 4-bit (bitsandbytes; QLoRA)."})
    bnb_4bit_quant_type: Literal["fp4", "nf4"] = field(default="nf4", metadata={"help": "4-bit number format."})
    use_bnb_nested_quant: bool = field(
        default=False, metadata={"help": "Quantise the 4-bit quantisation constants too (saves memory)."}
    )
    bnb_4bit_quant_storage: str = field(default="uint8", metadata={"help": "dtype the 4-bit weights are stored in."})

    def __post_init__(self):
        if self.load_in_8bit and self.load_in_4bit:
            raise ConfigError("load_in_8bit and load_in_4bit are both true: choose one quantisation.")


@dataclass
class DataArguments:
    chat_template: str | None = field(default=None, metadata={"help": "Jinja template; wins over the tokenizer's."})
    dataset_mixer: dict[str, float] | None = field(
        default=None, metadata={"help": "{source: fraction}; a source is a hub id, a save_to_disk folder or files."}
    )
    dataset_splits: list[str] = field(
        default_factory=lambda: ["train", "test"], metadata={"help": "Splits to read; *train* and *test* sides."}
    )
    dataset_configs: list[str] | None = field(default=None, metadata={"help": "One config name per source."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for rendering and tokenising (datasets.map num_proc)."}
    )
    auto_insert_empty_system_msg: bool = field(
        default=True, metadata={"help": "Insert an empty system turn where the template expects one."}
    )
    allow_special_tokens_in_text: bool = field(
        default=False,
        metadata={
            "help": "Train on pairs whose message text holds a special token of the tokenizer (e.g."
            " <|eot_id|>), which is tokenised as that control token; off: such pairs are dropped, counted and"
            " listed in output_dir/dropped_pairs.jsonl."
        },
    )

    def __post_init__(self):
        if self.chat_template is not None and "{{" not in self.chat_template and "{%" not in self.chat_template:
            # axolotl's chat_template (and LLaMA-Factory's template) names one; as Jinja it renders constant text
            raise ConfigError(
                f"chat_template={self.chat_template!r} is no Jinja template (a template's name, as axolotl's"
                " chat_template is?): here chat_template is the template's Jinja text; delete the key to use the"
                " tokenizer's own template."
            )


@dataclass
class ElasticResumeArguments:
    """The resume keys both training recipes' configs take from here (SimPOConfig, SFTRunConfig), and how both are
    pickled (the Trainer writes the config into every checkpoint and output_dir as training_args.bin): without the
    value of any key ending in "token" (hub_token), which would sit there in plain text (and go to the Hub with
    push_to_hub). The object in memory keeps it: the Trainer's push reads it from there."""

    allow_global_batch_change: bool = field(
        default=False,
        metadata={
            "help": "Resume a checkpoint with another global batch (per-device x processes x accumulation)"
            " than it was trained with; off: refused before the model loads. See docs/elastic-resume.md."
        },
    )
    resume_with_changes: bool = field(
        default=False,
        metadata={
            "help": "Continue output_dir's checkpoint although this launch's settings (or training data) differ"
            " from those it was trained with: they apply from the resumed step on, the learning rate and schedule"
            " included, and run_history.jsonl and the model card record the change. Off: such a relaunch is"
            " refused before anything loads, listing the differences. See docs/bad-input-and-resume.md."
        },
    )

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in secret_keys(self):
            state[key] = None
        return state


def secret_keys(args) -> list[str]:
    """The keys whose value is a secret: every field named *token (hub_token)."""
    return [f.name for f in fields(args) if f.name.endswith("token")]


def training_number_problems(args) -> list[str]:
    """The training numbers transformers only trips over once data and model have loaded (a ZeroDivisionError for
    gradient_accumulation_steps: 0) or quietly replaces (eval_steps: 0 becomes logging_steps), and a launch that would
    train nothing, each naming its key. `args` is a TrainingArguments before its own __post_init__."""
    problems = []
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, key) < 1:
            problems.append(f"{key} must be at least 1 (got {getattr(args, key)}).")
    if not math.isfinite(args.learning_rate) or args.learning_rate < 0:
        problems.append(f"learning_rate must be a finite number >= 0 (got {args.learning_rate}).")
    for key in ("logging_steps", "eval_steps", "save_steps"):
        value = getattr(args, key)
        if value is not None and not value > 0:  # `not >` also catches nan
            remedy = " Remove the key to evaluate every logging_steps." if key == "eval_steps" else ""
            problems.append(
                f"{key} must be positive (got {value}): a number of steps, or below 1 a fraction of the"
                f" run's steps.{remedy}"
            )
    if getattr(args, "do_train", True) and args.max_steps <= 0 and not args.num_train_epochs > 0:
        problems.append(
            f"max_steps={args.max_steps} and num_train_epochs={args.num_train_epochs} train nothing: set"
            " a positive max_steps or num_train_epochs (do_train: false evaluates without training)."
        )
    return problems


def output_dir_problems(output_dir: str | None) -> list[str]:
    """Why a run could not write output_dir (a file, below a file, not writable), found when the config is read:
    transformers would only fail once the data and model have loaded. Writability is tried, not inferred from the
    mode bits (which do not bind root, while a read-only mount binds everyone): a probe file is created in the
    folder itself or in the nearest one that exists, and removed."""
    if not output_dir:
        return []
    path = os.path.abspath(os.path.expanduser(output_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        return [f"output_dir={output_dir} is a file, not a folder: give the folder the run writes into."]
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return [f"output_dir={output_dir} is below {existing}, which is a file: no folder can be made there."]
    probe = os.path.join(existing, f".simpo-write-probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.remove(probe)
    except OSError as err:
        where = "it" if existing == path else f"{existing}, the nearest folder on its way that exists,"
        return [
            f"output_dir={output_dir} cannot be written: {where} refuses new files ({err.strerror}). Give a folder"
            " you can write to."
        ]
    return []


def finish_training_arguments(args, problems: list[str], post_init) -> None:
    """A training config's __post_init__ after its own checks (`problems`, each naming its key): with the training
    numbers' problems, every one is raised at once as a ConfigError. transformers' (or TRL's) own __post_init__
    (`post_init`) runs only on settings that passed them (it would divide by a 0 accumulation, or warn about a value
    refused here); what it refuses is raised the same way."""
    problems = training_number_problems(args) + output_dir_problems(args.output_dir) + problems
    if not problems:
        try:
            post_init()
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError(*problems)
