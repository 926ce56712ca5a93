"""Start-up checks of the model settings, run by the recipes before the data is tokenised and the weights load: what
would otherwise fail late (a peft or bitsandbytes traceback, a collator TypeError at the first batch) or train
something else than asked (a LoRA target name matching no module, positions beyond the model's context). Each reads
the model's config, or builds the model on the meta device (no weights), and refuses with a ConfigError naming the key
and the fix."""

import importlib
import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from simpo.errors import ConfigError
from simpo.models.loading import from_pretrained

# The layers LoRA adapts (peft's LoRA layer types); a target name matching only other modules (a block, an MLP) is
# refused by peft with a traceback.
LORA_LAYERS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)
ALL_LINEAR = "all-linear"  # peft's shorthand for every linear layer but the output head
# Config fields that hold a model's context length, by architecture family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_config(model_args):
    """The model's config (config.json alone: no weights)."""
    return from_pretrained(
        AutoConfig,
        model_args.model_name_or_path,
        "model_name_or_path",
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
    )


def module_names(config, trust_remote_code: bool = False) -> dict[str, type]:
    """{module name: module class} of the model `config` describes, built on the meta device (no memory, no
    weights)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return {name: type(module) for name, module in model.named_modules() if name}


def lora_target_problems(targets: list[str] | None, to_save: list[str] | None, modules: dict[str, type]) -> list[str]:
    """Why LoRA's target names (peft's rule: a module's full name or its last dotted parts) or modules_to_save names
    (peft's rule: the end of a module's name) would adapt or save nothing they name."""
    problems = []
    if targets and ALL_LINEAR in targets and targets != [ALL_LINEAR]:
        problems.append(f"lora_target_modules: {ALL_LINEAR!r} stands for every linear layer, alone, not in a list")
    for target in [t for t in targets or [] if t != ALL_LINEAR]:
        matched = {cls for name, cls in modules.items() if name == target or name.endswith(f".{target}")}
        if not matched:
            problems.append(f"lora_target_modules: {target!r} matches no module")
        elif not any(issubclass(cls, LORA_LAYERS) for cls in matched):
            kinds = ", ".join(sorted(cls.__name__ for cls in matched))
            problems.append(f"lora_target_modules: {target!r} matches only {kinds}, which LoRA cannot adapt")
    for name in to_save or []:
        if not any(module.endswith(name) for module in modules):
            problems.append(f"lora_modules_to_save: {name!r} matches no module")
    return problems


def check_lora_targets(model_args, config=None) -> None:
    """Refuse LoRA target and modules_to_save names that match nothing in the model (peft would train adapters on
    the other names only, or stop with NoMatchingPeftModuleError), listing the model's linear layers."""
    if not model_args.use_peft or not (model_args.lora_target_modules or model_args.lora_modules_to_save):
        return
    config = config or model_config(model_args)
    modules = module_names(config, model_args.trust_remote_code)
    problems = lora_target_problems(model_args.lora_target_modules, model_args.lora_modules_to_save, modules)
    if problems:
        linear = sorted({name.rsplit(".", 1)[-1] for name, cls in modules.items() if issubclass(cls, LORA_LAYERS)})
        raise ConfigError(
            f"LoRA module names that {model_args.model_name_or_path} ({config.model_type}) does not have:"
            f" {'; '.join(problems)}. Its layers LoRA can adapt are named {', '.join(linear)}: give some of these"
            " (e.g. --lora_target_modules=q_proj,v_proj), or leave lora_target_modules unset for peft's default."
        )


def context_length(config, model_init_kwargs: dict | None) -> tuple[str, int] | None:
    """(config field, positions) of the model's context, model_init_kwargs' override included; None when the config
    states none."""
    for key in CONTEXT_KEYS:
        value = (model_init_kwargs or {}).get(key, getattr(config, key, None))
        if isinstance(value, int) and value > 0:
            return key, value
    return None


def check_context(model_args, args, config=None) -> None:
    """Refuse a max_length beyond the model's context: the positions past it were never trained, and transformers
    only warns (or, for learned position embeddings, fails at the first long batch)."""
    max_length = getattr(args, "max_length", None)
    if not max_length:
        return
    config = config or model_config(model_args)
    found = context_length(config, args.model_init_kwargs)
    if found and max_length > found[1]:
        key, positions = found
        raise ConfigError(
            f"max_length {max_length} is above the context of {model_args.model_name_or_path} ({key} = {positions}"
            f" in its config): sequences that long would use positions the model was never trained on. Set"
            f" --max_length={positions} or lower (max_prompt_length below it), or extend the context with"
            f" model_init_kwargs (e.g. {{{key}: ..., rope_scaling: ...}}) where the model supports it."
        )


def check_quantization_backend(model_args) -> None:
    """Refuse load_in_4bit / load_in_8bit when bitsandbytes cannot be imported (transformers would raise an
    ImportError once the data has loaded)."""
    key = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit" if model_args.load_in_8bit else None
    if key is None:
        return
    try:
        importlib.import_module("bitsandbytes")
    except Exception as err:  # missing, or broken (no matching CUDA library): either way unusable
        raise ConfigError(
            f"{key}: true needs bitsandbytes, which cannot be imported here ({type(err).__name__}: {err}). Install it"
            f" (pip install bitsandbytes), or set {key}: false to load the weights unquantised."
        ) from err


def check_model_settings(model_args, args) -> None:
    """The checks that need the model's config alone, before anything expensive loads."""
    check_quantization_backend(model_args)
    config = model_config(model_args)
    check_context(model_args, args, config)
    check_lora_targets(model_args, config)


def check_special_tokens(tokenizer, model_args) -> None:
    """Refuse a tokenizer without an EOS token: replies could not end with it (the model would never learn to stop)
    and, with no pad token either (the pad token defaults to EOS), the collator fails at the first batch, after
    output_dir is written."""
    if tokenizer.eos_token_id is not None:
        return
    key = "tokenizer_name_or_path" if model_args.tokenizer_name_or_path else "model_name_or_path"
    name = getattr(model_args, key)
    where = os.path.join(name, "tokenizer_config.json") if os.path.isdir(name) else f"{name}'s tokenizer_config.json"
    raise ConfigError(
        f"The tokenizer of {key}={name} has no EOS token (eos_token is unset), so replies cannot end with one"
        f"{'' if tokenizer.pad_token_id is not None else ' and batches have no pad token'}. Set eos_token in"
        f" {where} to the token that ends an assistant turn (e.g. <|im_end|>, <|eot_id|>, </s>), or point"
        " tokenizer_name_or_path at a tokenizer that has one."
    )
