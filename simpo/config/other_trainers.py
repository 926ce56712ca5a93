"""Keys a user brings from other SimPO trainers (TRL's CPOConfig, LLaMA-Factory, axolotl): each is refused with what
it is here and the value it would take, computed from the config (simpo_gamma = 0.5 with this run's beta 2.0 is
gamma_beta_ratio = 0.25). docs/configuration.md has the table, with the data formats.

A translation is offered only by a command that has the key it names (sft_weight is no key of simpo-sft's, so
cpo_alpha there is an unknown key as any other).
"""

from collections.abc import Callable
from dataclasses import dataclass

TRL = "TRL's CPOConfig"
LLAMA_FACTORY = "LLaMA-Factory's"
AXOLOTL = "axolotl's"
GAMMA_KEYS = ("gamma_beta_ratio", "beta")
BETA_KEYS = ("beta", "pref_beta", "rl_beta")  # where the config sets beta, in this order


@dataclass(frozen=True)
class Foreign:
    where: str  # whose key it is
    needs: tuple[str, ...]  # the keys here the translation names
    say: Callable  # (value, config) -> what to do instead


class Config:
    """What the translations read: the values the config sets (the refused foreign keys included) and the defaults
    of the command's keys."""

    def __init__(self, given: dict, defaults: dict):
        self.given, self.defaults = given, defaults

    def beta(self) -> tuple[float, str] | None:
        """The beta this run would use, and where it comes from."""
        for key in BETA_KEYS:
            if key in self.given and number(self.given[key]) is not None:
                return number(self.given[key]), f"the {key} your config sets"
        default = number(self.defaults.get("beta"))
        return (default, "this run's default beta") if default is not None else None


def number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def shown(value) -> str:
    return f"{number(value):g}" if number(value) is not None else str(value)


def margin(key: str) -> Callable:
    """simpo_gamma / gamma, the margin itself, as gamma_beta_ratio."""

    def say(value, config: Config) -> str:
        gamma, beta = number(value), config.beta()
        rule = f"here the margin is beta * gamma_beta_ratio, so gamma_beta_ratio = {key} / beta"
        if gamma is None or not beta or not beta[0]:
            return f"{rule}: set gamma_beta_ratio"
        return f"{rule}: use gamma_beta_ratio={gamma / beta[0]:g} ({gamma:g} / {beta[0]:g}, {beta[1]})"

    return say


def rename(key: str, note: str = "") -> Callable:
    return lambda value, config: f"use {key}={shown(value)}{note}"


def pref_loss(value, config: Config) -> str:
    if str(value).lower() == "simpo":
        return "this recipe's loss is SimPO's: delete the key (loss_type: sigmoid, the default, is that loss)"
    return f"'{value}' is another loss; this package trains SimPO (loss_type sigmoid, or hinge)"


def rl(value, config: Config) -> str:
    if str(value).lower() == "simpo":
        return "delete the key: this recipe trains SimPO"
    return f"'{value}' is another method; this package trains SimPO (and its SFT stage, simpo-sft)"


def finetuning_type(value, config: Config) -> str:
    return {
        "lora": "use use_peft=true (lora_r, lora_alpha, lora_dropout, lora_target_modules)",
        "full": "delete the key: all weights are trained unless use_peft is true",
    }.get(str(value).lower(), f"'{value}' has no equivalent here: all weights, or LoRA (use_peft=true)")


def adapter(value, config: Config) -> str:
    return {
        "lora": "use use_peft=true",
        "qlora": "use use_peft=true and load_in_4bit=true",
    }.get(str(value).lower(), f"'{value}' has no equivalent here: all weights, or LoRA (use_peft=true)")


def lora_target(value, config: Config) -> str:
    if str(value).lower() == "all":
        return (
            "list the modules in lora_target_modules (e.g. [q_proj, k_proj, v_proj, o_proj]), or leave it unset for"
            " peft's default"
        )
    return f"use lora_target_modules=[{value}]"


DATA = (
    "here a source is a local folder or file, or a Hub id, in dataset_mixer: {path: 1.0}, its rows chosen/rejected"
    " message lists (docs/configuration.md, 'Coming from TRL, LLaMA-Factory or axolotl', converts the formats)"
)

FOREIGN_KEYS = {
    "simpo_gamma": Foreign(f"{TRL}, {LLAMA_FACTORY} and {AXOLOTL} SimPO margin", GAMMA_KEYS, margin("simpo_gamma")),
    "gamma": Foreign("the SimPO paper's margin gamma", GAMMA_KEYS, margin("gamma")),
    "cpo_alpha": Foreign(
        f"{TRL} and {AXOLOTL} weight of the NLL on the chosen replies",
        ("sft_weight",),
        rename("sft_weight", " (0, pure SimPO, is the default here; TRL's default is 1.0)"),
    ),
    "pref_ftx": Foreign(
        f"{LLAMA_FACTORY} weight of the NLL on the chosen replies",
        ("sft_weight",),
        rename("sft_weight", " (here the NLL is a mean over all chosen tokens of the batch)"),
    ),
    "pref_beta": Foreign(f"{LLAMA_FACTORY} beta", ("beta",), rename("beta", " (the SimPO paper's range is 2 to 10)")),
    "rl_beta": Foreign(f"{AXOLOTL} beta", ("beta",), rename("beta", " (the SimPO paper's range is 2 to 10)")),
    "dpo_label_smoothing": Foreign(
        f"{LLAMA_FACTORY} and {AXOLOTL} label smoothing", ("label_smoothing",), rename("label_smoothing")
    ),
    "pref_loss": Foreign(f"{LLAMA_FACTORY} loss", ("loss_type",), pref_loss),
    "rl": Foreign(f"{AXOLOTL} method", ("loss_type",), rl),
    "stage": Foreign(
        f"{LLAMA_FACTORY} stage",
        ("loss_type",),
        lambda value, config: "delete the key: each stage is its own command here (simpo-sft, simpo-train)",
    ),
    "finetuning_type": Foreign(f"{LLAMA_FACTORY} fine-tuning method", ("use_peft",), finetuning_type),
    "adapter": Foreign(f"{AXOLOTL} adapter", ("use_peft",), adapter),
    "lora_rank": Foreign(f"{LLAMA_FACTORY} LoRA rank", ("lora_r",), rename("lora_r")),
    "lora_target": Foreign(f"{LLAMA_FACTORY} LoRA modules", ("lora_target_modules",), lora_target),
    "cutoff_len": Foreign(
        f"{LLAMA_FACTORY} sequence length", ("max_length",), rename("max_length", " (prompt + reply tokens)")
    ),
    "sequence_len": Foreign(
        f"{AXOLOTL} sequence length", ("max_length",), rename("max_length", " (prompt + reply tokens)")
    ),
    "max_completion_length": Foreign(
        f"{TRL} reply length",
        ("max_length", "max_prompt_length"),
        lambda value, config: "here a pair is cut by max_length (prompt + reply) and max_prompt_length: set those",
    ),
    "base_model": Foreign(f"{AXOLOTL} model", ("model_name_or_path",), rename("model_name_or_path")),
    "micro_batch_size": Foreign(
        f"{AXOLOTL} per-device batch", ("per_device_train_batch_size",), rename("per_device_train_batch_size")
    ),
    "num_epochs": Foreign(f"{AXOLOTL} epochs", ("num_train_epochs",), rename("num_train_epochs")),
    "lr_scheduler": Foreign(f"{AXOLOTL} schedule", ("lr_scheduler_type",), rename("lr_scheduler_type")),
    "template": Foreign(
        f"{LLAMA_FACTORY} template name",
        ("chat_template",),
        lambda value, config: (
            "delete the key: the tokenizer's own chat template is used (chat_template takes a"
            " Jinja string, to override it)"
        ),
    ),
    "dataset": Foreign(f"{LLAMA_FACTORY} data set", ("dataset_mixer",), lambda value, config: DATA),
    "dataset_dir": Foreign(f"{LLAMA_FACTORY} data folder", ("dataset_mixer",), lambda value, config: DATA),
    "datasets": Foreign(f"{AXOLOTL} data sets", ("dataset_mixer",), lambda value, config: DATA),
}

# Values of keys this package shares, as other trainers mean them.
FOREIGN_VALUES = {
    ("loss_type", "simpo"): f"{TRL} loss_type simpo is this package's sigmoid loss (length-normalised average"
    " log-probs, margin gamma): use loss_type=sigmoid, the default",
    ("loss_type", "alphapo"): f"{TRL} AlphaPO loss is not in this package",
    ("loss_type", "ipo"): f"{TRL} IPO loss is not in this package",
}


def translation(key: str, value, config: Config, known) -> str | None:
    """What `key: value` from another trainer is here, or None when the key is none of theirs (or this command has
    no key its translation names)."""
    foreign = FOREIGN_KEYS.get(key)
    if foreign is None or not all(name in known for name in foreign.needs):
        return None
    return f"it is {foreign.where}; {foreign.say(value, config)}"


def value_translation(key: str, value) -> str:
    """' <what it is here>.' for a value another trainer gives a shared key, or ''."""
    said = FOREIGN_VALUES.get((key, str(value).lower()))
    return f" {said}." if said else ""
