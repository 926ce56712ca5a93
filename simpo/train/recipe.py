"""The SimPO recipe behind scripts/run_simpo.py and `simpo-train`: start (parse, log, check, seed), data, tokenizer,
model and trainer, record, train, save, card, evaluate, curves; each step one call into a small module."""

import logging

from simpo.data.chat_templates import render_pairs, set_chat_template
from simpo.data.mixer import mix_datasets, require_eval_split
from simpo.data.validation import CUTS_FILE, report_drops, write_records
from simpo.models.checks import check_model_settings, check_special_tokens
from simpo.models.loading import get_peft_config, get_tokenizer, model_init_kwargs
from simpo.reporting.curves import plot_curves
from simpo.run.commands import exit_process, report_input_errors
from simpo.run.relaunch import check_data
from simpo.run.steps import (
    evaluate_and_save,
    finish,
    no_training,
    record_run,
    run_callbacks,
    save_final,
    start_run,
    stopped_by_signal,
    train,
)
from simpo.train.config import SIMPO_ARGUMENTS
from simpo.train.reporting import RUN_PANELS, simpo_end_summary
from simpo.train.trainer import SimPOTrainer

logger = logging.getLogger("simpo")
DESCRIPTION = (
    "Train a language model with SimPO (Simple Preference Optimization) on preference pairs, from a YAML"
    " config and --key=value overrides."
)


@report_input_errors("simpo-train")
def main() -> None:
    """`simpo-train` and scripts/run_simpo.py: the recipe, then the process's exit (exit_process)."""
    exit_process(train_main())


def train_main(argv: list[str] | None = None, callbacks: list | None = None) -> int:
    """Run the recipe; `callbacks` (TrainerCallback instances) are added to the trainer's, e.g. for probes. Returns
    the process's exit code: 0, or 128 + the signal that stopped training (a checkpoint is saved; relaunch)."""
    launch = start_run(argv, SIMPO_ARGUMENTS, "simpo-train", DESCRIPTION)
    model_args, data_args, training_args = launch.model_args, launch.data_args, launch.args

    raw_datasets = mix_datasets(
        data_args.dataset_mixer, data_args.dataset_splits, data_args.dataset_configs, seed=training_args.seed
    )
    require_eval_split(training_args, raw_datasets, example="test_prefs")
    if check_data(launch, raw_datasets):  # the relaunch of a finished run: nothing to train, before the model loads
        return 0
    check_model_settings(model_args, training_args)  # LoRA names, context, bitsandbytes: from the config alone
    tokenizer = get_tokenizer(model_args)
    check_special_tokens(tokenizer, model_args)
    template = set_chat_template(tokenizer, data_args.chat_template, model_args.model_name_or_path)
    raw_datasets = render_pairs(
        raw_datasets,
        tokenizer,
        data_args.auto_insert_empty_system_msg,
        data_args.preprocessing_num_workers,
        data_args.allow_special_tokens_in_text,
        template,
    )

    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    trainer = SimPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=raw_datasets["train"],
        eval_dataset=raw_datasets.get("test"),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args, training_args),
        callbacks=[*run_callbacks(launch), *(callbacks or [])],
    )
    record_run(launch)
    if trainer.accelerator.is_main_process:
        report_drops([d for records in trainer.dropped_pairs.values() for d in records], training_args.output_dir)
        write_records(
            [c for records in trainer.truncated_pairs.values() for c in records], training_args.output_dir, CUTS_FILE
        )

    if no_training(trainer):
        return finish(trainer, launch)

    train_result = train(trainer, launch)
    if (code := stopped_by_signal(trainer, launch)) is not None:
        return code
    card = {
        "finetuned_from": model_args.model_name_or_path,
        "dataset": list(data_args.dataset_mixer),
        "tags": ["simpo", "preference-optimization"],
    }
    save_final(trainer, launch, {**train_result.metrics, "train_samples": len(trainer.train_dataset)}, card)
    if (code := stopped_by_signal(trainer, launch, final_saved=True)) is not None:
        return code

    if training_args.do_eval and "test" in raw_datasets:
        evaluate_and_save(trainer)

    plot_curves(trainer, RUN_PANELS, "SimPO")  # output_dir/training_curves.png, main process; a failure only warns

    if training_args.push_to_hub:
        trainer.push_to_hub(tags=["simpo"])
    logger.info("Training finished; outputs are in %s", training_args.output_dir)
    if trainer.accelerator.is_main_process:
        print(simpo_end_summary(trainer, train_result.metrics, resumed_at=launch.resumed_at), flush=True)
    return finish(trainer, launch)
