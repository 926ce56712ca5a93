"""The training recipe behind scripts/run_simpo.py and `simpo-train`: parse, seed, data, tokenizer, model, train,
save."""

import logging
import sys

import datasets
import transformers
from transformers import set_seed

from simpo.chat_templates import render_pairs, set_chat_template
from simpo.data import mix_datasets, require_eval_split
from simpo.launch_checks import check_launch, exit_process
from simpo.model import get_peft_config, get_tokenizer, model_init_kwargs, save_config_for_generation
from simpo.parser import parse_args
from simpo.reporting import end_summary, plot_curves
from simpo.resume import StopOnSignal, checkpoint_state, finished_run, last_complete_checkpoint
from simpo.run_config import save_run_config
from simpo.trainer import SimPOTrainer
from simpo.validation import report_drops

logger = logging.getLogger("simpo")


def setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    # Our own messages (data drops, resumes, summaries) are few and always worth reading on the main process.
    logger.setLevel(logging.INFO if training_args.should_log else level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def checkpoint_to_resume(training_args) -> str | None:
    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    last = last_complete_checkpoint(training_args.output_dir)
    if last is not None:
        logger.info("Resuming from the last complete checkpoint in output_dir: %s", last)
    return last


def main() -> None:
    """`simpo-train` and scripts/run_simpo.py: the recipe, then the process's exit (exit_process)."""
    exit_process(train_main())


def train_main(argv: list[str] | None = None, callbacks: list | None = None) -> int:
    """Run the recipe; `callbacks` (TrainerCallback instances) are added to the trainer's, e.g. for probes. Returns
    the process's exit code: 0, or 128 + the signal that stopped training (a checkpoint is saved; relaunch)."""
    model_args, data_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(training_args)
    logger.info("Model arguments %s", model_args)
    logger.info("Data arguments %s", data_args)
    logger.info("Training arguments %s", training_args)
    if training_args.should_save:
        save_run_config(model_args, data_args, training_args)  # for evaluation set-ups and reruns
    if model_args.trust_remote_code:
        logger.warning("trust_remote_code is on: code shipped with %s will run.", model_args.model_name_or_path)
    check_launch(training_args)  # a launch accelerate would silently degrade is refused in seconds
    checkpoint = checkpoint_to_resume(training_args)
    set_seed(training_args.seed)

    raw_datasets = mix_datasets(
        data_args.dataset_mixer, data_args.dataset_splits, data_args.dataset_configs, seed=training_args.seed
    )
    require_eval_split(training_args, raw_datasets, example="test_prefs")
    tokenizer = get_tokenizer(model_args)
    set_chat_template(tokenizer, data_args.chat_template, model_args.model_name_or_path)
    raw_datasets = render_pairs(raw_datasets, tokenizer, data_args.auto_insert_empty_system_msg,
                                data_args.preprocessing_num_workers)

    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    stop = StopOnSignal()
    trainer = SimPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=raw_datasets["train"],
        eval_dataset=raw_datasets.get("test"),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args, training_args),
        callbacks=[stop, *(callbacks or [])],
    )
    if trainer.accelerator.is_main_process:
        report_drops([d for records in trainer.dropped_pairs.values() for d in records], training_args.output_dir)

    if no_training(trainer, checkpoint):
        return finish(trainer)

    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    if stop.signum is not None:
        logger.warning("Stopped by signal %d; relaunch the same command to resume.", stop.signum)
        trainer.accelerator.end_training()
        return 128 + stop.signum
    metrics = {**train_result.metrics, "train_samples": len(trainer.train_dataset)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    logger.info("Model saved to %s", training_args.output_dir)

    if trainer.accelerator.is_main_process:
        trainer.create_model_card(
            finetuned_from=model_args.model_name_or_path,
            dataset=list(data_args.dataset_mixer),
            tags=["simpo", "preference-optimization"],
        )
        save_config_for_generation(trainer.model, training_args.output_dir)

    if training_args.do_eval and "test" in raw_datasets:
        evaluate_and_save(trainer)

    plot_curves(trainer)  # output_dir/training_curves.png, main process; a failure only warns

    if training_args.push_to_hub:
        trainer.push_to_hub(tags=["simpo"])
    logger.info("Training finished; outputs are in %s", training_args.output_dir)
    if trainer.accelerator.is_main_process:
        resumed_at = (checkpoint_state(checkpoint) or {}).get("global_step")
        print(end_summary(trainer, train_result.metrics, resumed_at=resumed_at), flush=True)
    return finish(trainer)


def no_training(trainer, checkpoint: str | None) -> bool:
    """Whether this launch trains nothing: evaluation alone (do_train: false, done here), or the relaunch of a
    finished run (said here; its results are kept)."""
    if not trainer.args.do_train:
        evaluate_and_save(trainer)
        logger.info("Evaluation only (do_train: false): eval_results.json is in %s", trainer.args.output_dir)
        return True
    finished = finished_run(trainer, checkpoint)
    if finished:
        logger.warning(finished)
    return finished is not None


def evaluate_and_save(trainer) -> None:
    """The test split's metrics, logged and written to output_dir/eval_results.json."""
    metrics = {**trainer.evaluate(), "eval_samples": len(trainer.eval_dataset)}
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)


def finish(trainer) -> int:
    """Close trackers and the process group (gloo threads left running at exit can abort a finished rank: SIGABRT)."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0
