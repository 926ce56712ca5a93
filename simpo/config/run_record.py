"""What a run was launched with, kept beside its model: OUTPUT_DIR/run_config.yaml holds every key of the three
argument groups, flat, as the parser reads them (so the recipe that wrote it, `simpo-train` or `simpo-sft`, launches
the same run again from it). Evaluation set-ups read the chat template rule from it, and load the tokenizer exactly
as training set it up (simpo/models/loading.py, training_tokenizer).
"""

import dataclasses
import logging
import os

import yaml

from simpo.config.arguments import DataArguments, ModelArguments

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"


def run_config_values(model_args, data_args, training_args) -> dict:
    """Every key of the three groups, flat, as run_config.yaml holds them; a hub_token that is set stays masked as
    TrainingArguments.to_dict masks it. Taken as parsed: a recipe sets some (model_init_kwargs) before training."""
    training = training_args.to_dict()
    for key in training:  # to_dict masks every *_token field, also unset ones and SFT's eos_token / pad_token
        if key.endswith("_token") and (key != "hub_token" or getattr(training_args, key) is None):
            training[key] = getattr(training_args, key)
    if training.get("gradient_checkpointing") == training.get("activation_checkpointing"):
        # transformers mirrors activation_checkpointing into its deprecated alias, which may not take the value
        # (auto); the key the user sets is recorded once
        training.pop("gradient_checkpointing")
    return {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **training}


def save_run_config(model_args, data_args, training_args, values: dict | None = None) -> str:
    """Write output_dir/run_config.yaml: `values` (run_config_values, taken when the arguments were parsed), or the
    arguments' values now."""
    values = values if values is not None else run_config_values(model_args, data_args, training_args)
    os.makedirs(training_args.output_dir, exist_ok=True)
    path = os.path.join(training_args.output_dir, RUN_CONFIG)
    if os.path.exists(path):  # a relaunch: a resumed run continues under today's settings, so say what changed
        with open(path) as f:
            before = yaml.safe_load(f) or {}
        values = yaml.safe_load(yaml.safe_dump(values, sort_keys=False, allow_unicode=True))  # as the file reads
        changed = [key for key in values if key in before and before[key] != values[key]]
        if changed:
            logger.warning(
                "%s held other settings than this launch's (%s); it now records this launch's.",
                path,
                ", ".join(f"{key}: {before[key]!r} -> {values[key]!r}" for key in changed[:8]),
            )
    with open(path, "w") as f:
        f.write("# Written by simpo at the start of this run: every setting, as parsed (defaults included).\n")
        yaml.safe_dump(values, f, sort_keys=False, allow_unicode=True)
    return path


def note_in_run_config(output_dir: str, title: str, lines: list[str]) -> None:
    """Append a note to output_dir/run_config.yaml as YAML comments under `# <title>:` (a note of that title already
    there is replaced), so that the file still launches the same run: what a run decided once it started (the
    start-up self-check's paths), beside the settings that asked for it."""
    path = os.path.join(output_dir, RUN_CONFIG)
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = f.read().split(f"\n# {title}:\n")[0].rstrip("\n")
    with open(path, "w") as f:
        f.write(kept + f"\n# {title}:\n" + "".join(f"#   {line}\n" for line in lines))


def load_run_config(output_dir: str) -> tuple[ModelArguments, DataArguments] | None:
    """The model and data settings of the run in output_dir, or None when it wrote no run_config.yaml."""
    path = os.path.join(output_dir, RUN_CONFIG)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    pick = lambda cls: cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})
    return pick(ModelArguments), pick(DataArguments)


def run_folder_problem(output_dir: str) -> str | None:
    """Why output_dir is not a finished run's folder (the saved model and tokenizer), or None when it is one."""
    if not os.path.isdir(output_dir):
        return f"{output_dir} is not a folder: give the output_dir of a finished simpo-train or simpo-sft run."
    has = lambda name: os.path.exists(os.path.join(output_dir, name))
    missing = [
        name
        for name, present in (
            ("config.json or adapter_config.json", has("config.json") or has("adapter_config.json")),
            ("tokenizer_config.json", has("tokenizer_config.json")),
        )
        if not present
    ]
    if missing:
        return (
            f"{output_dir} holds no saved model (no {' and no '.join(missing)}): give the output_dir of a"
            " simpo-train or simpo-sft run that finished (it saves the model and tokenizer there)."
        )
    return None


def run_settings(output_dir: str) -> tuple[ModelArguments, DataArguments]:
    """load_run_config, or (for a folder without one) the saved tokenizer's template and the default rules."""
    loaded = load_run_config(output_dir)
    if loaded is None:
        logger.warning(
            "%s has no %s (written by runs since evaluation set-ups exist): using the saved tokenizer's"
            " chat template and the default empty-system-turn rule.",
            output_dir,
            RUN_CONFIG,
        )
        return ModelArguments(model_name_or_path=output_dir), DataArguments()
    return loaded
