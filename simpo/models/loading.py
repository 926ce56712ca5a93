"""Loading models and tokenizers from ModelArguments: the tokenizer's set-up, the model's from_pretrained kwargs
(dtype, attention, quantisation, the YAML's model_init_kwargs), the LoRA config, and loading a finished run's model
and tokenizer for generation."""

import importlib.util
import logging
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainingArguments

from simpo.config.arguments import DataArguments, ModelArguments
from simpo.data.chat_templates import set_chat_template
from simpo.environment import env_flag
from simpo.errors import ConfigError, ModelNotFound

logger = logging.getLogger(__name__)

MAX_SANE_MODEL_LENGTH = 100_000  # some tokenizers report int(1e30) when they have no limit


def from_pretrained(loader, name: str, key: str, **kwargs):
    """loader.from_pretrained(name, **kwargs), with an error that names the config key when `name` is neither a
    local folder nor a model the Hub (or, offline, its cache) has: transformers' own says neither."""
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        raise ModelNotFound(
            f"{key}: there is no folder {name!r}. Give a model folder (e.g. a finished run's output_dir) or a Hub id."
        )
    try:
        return loader.from_pretrained(name, **kwargs)
    except OSError as err:
        if os.path.isdir(name):
            raise
        offline = (
            " (HF_HUB_OFFLINE is set: only the local Hub cache was searched)" if env_flag("HF_HUB_OFFLINE") else ""
        )
        raise ModelNotFound(
            f"{key}: {name!r} is not a local folder, and it could not be loaded from the Hub{offline}."
            f" Check the name (and your login, for gated models) or give a local folder. ({err})"
        ) from err


def get_tokenizer(model_args: ModelArguments):
    key = "tokenizer_name_or_path" if model_args.tokenizer_name_or_path else "model_name_or_path"
    tokenizer = from_pretrained(
        AutoTokenizer,
        model_args.tokenizer_name_or_path or model_args.model_name_or_path,
        key,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.model_max_length > MAX_SANE_MODEL_LENGTH:
        tokenizer.model_max_length = 2048
    return tokenizer


def save_config_for_generation(model, output_dir: str) -> None:
    """The saved config with the KV cache back on (training turned it off). A LoRA run saves an adapter, whose folder
    must not get the base model's config.json: loaders would then look for full weights there."""
    if hasattr(model, "peft_config"):
        return
    model.config.use_cache = True
    model.config.save_pretrained(output_dir)


def load_for_generation(path: str, **kwargs):
    """A causal LM to sample from: a saved model, or a LoRA run's adapter merged into its base model (peft's own
    loader: transformers 5.24 loads adapter folders only with peft >= 0.22)."""
    if os.path.exists(os.path.join(path, "adapter_config.json")):
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def resolve_dtype(dtype):
    """'auto', None or a torch dtype pass through; 'bfloat16' etc. become torch dtypes."""
    return getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype


def attn_implementation(requested: str | None) -> str | None:
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        logger.warning("attn_implementation=flash_attention_2 but flash-attn is not installed: using sdpa instead.")
        return "sdpa"
    return requested


def quantization_config(model_args: ModelArguments) -> BitsAndBytesConfig | None:
    if model_args.load_in_4bit:
        compute_dtype = resolve_dtype(model_args.torch_dtype)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=compute_dtype if isinstance(compute_dtype, torch.dtype) else torch.float32,
            bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
            bnb_4bit_quant_storage=model_args.bnb_4bit_quant_storage,
        )
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


# from_pretrained kwargs that a config key already sets: model_init_kwargs may not set them a second way.
SET_BY_KEYS = {
    "revision": "model_revision",
    "trust_remote_code": "trust_remote_code",
    "attn_implementation": "attn_implementation",
    "dtype": "torch_dtype",
    "torch_dtype": "torch_dtype",
    "quantization_config": "load_in_4bit / load_in_8bit (and the bnb_* keys)",
    "use_cache": "activation_checkpointing (the cache is off while it is on)",
    "device_map": "nothing: accelerate places the model on each process's device",
}


def model_init_kwargs(model_args: ModelArguments, training_args: TrainingArguments) -> dict:
    """from_pretrained kwargs: the YAML's model_init_kwargs (any other from_pretrained or config argument, e.g.
    max_position_embeddings) plus those the model keys set. dtype stays a string here (the args are logged as JSON);
    the trainer converts it."""
    extra = dict(training_args.model_init_kwargs or {})
    clashes = sorted(set(extra) & set(SET_BY_KEYS))
    if clashes:
        raise ConfigError(
            f"model_init_kwargs sets {clashes[0]!r}, which the config key {SET_BY_KEYS[clashes[0]]} sets: use that key"
            " instead."
        )
    quantization = quantization_config(model_args)
    kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
        "attn_implementation": attn_implementation(model_args.attn_implementation),
        "dtype": model_args.torch_dtype,
        "use_cache": not training_args.activation_checkpointing,
    }
    if quantization is not None:
        # Each process loads its own quantised copy on its own device.
        kwargs["device_map"] = {"": training_args.local_process_index if torch.cuda.is_available() else "cpu"}
        kwargs["quantization_config"] = quantization.to_dict()  # a dict keeps the args JSON-serialisable
    return {**extra, **{k: v for k, v in kwargs.items() if v is not None}}


def get_peft_config(model_args: ModelArguments, training_args: TrainingArguments):
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    targets = model_args.lora_target_modules
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=0.0 if training_args.disable_dropout else model_args.lora_dropout,
        # peft reads its "all-linear" shorthand as a string only, not as the one-name list the parser makes of it
        target_modules="all-linear" if not targets or targets == ["all-linear"] else targets,
        modules_to_save=model_args.lora_modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
    )


def training_tokenizer(output_dir: str, model_args: ModelArguments, data_args: DataArguments):
    """The tokenizer a finished run saved, with the chat template training applied (the YAML's, or the Mistral
    rule's)."""
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    set_chat_template(tokenizer, data_args.chat_template, model_args.model_name_or_path)
    return tokenizer
