"""The steps both training recipes (simpo/train/recipe.py, simpo/sft/recipe.py) share: start a run (parse, log,
record, check, find the checkpoint, seed), the launches that train nothing, the stop by a signal, evaluation, and the
closing of the process group."""

import logging
import os
import sys

from transformers import set_seed

from simpo.core.elastic import adapt_to_checkpoint
from simpo.core.finite import refuse_non_finite_weights
from simpo.core.launch_checks import check_build_locks, check_launch
from simpo.core.logs import setup_logging
from simpo.core.parser import ConfigError, parse_args
from simpo.core.resume import (
    StopOnSignal,
    checkpoint_problem,
    disk_full_explained,
    finished_run,
    last_complete_checkpoint,
)
from simpo.core.run_config import save_run_config
from simpo.core.run_lock import lock_folder, unlock_folder

logger = logging.getLogger("simpo")


def start_run(argv: list[str] | None, argument_groups: tuple, prog: str, description: str):
    """Parse (model, data and the recipe's training arguments), log them, refuse a launch accelerate would degrade,
    find the checkpoint to resume (fitting the launch to it: simpo/core/elastic.py) and seed. Returns (model_args,
    data_args, args, checkpoint or None). Nothing is written yet: record_run does, once the data and model have
    loaded."""
    argv = sys.argv[1:] if argv is None else argv
    check_build_locks(argv)  # before parsing, which starts DeepSpeed (and would wait on the lock forever)
    model_args, data_args, args = parse_args(argv, argument_groups, prog=prog, description=description)
    setup_logging(args.should_log, args.get_process_log_level())
    logger.info("Model arguments %s", model_args)
    logger.info("Data arguments %s", data_args)
    logger.info("Training arguments %s", args)
    if model_args.trust_remote_code:
        logger.warning("trust_remote_code is on: code shipped with %s will run.", model_args.model_name_or_path)
    check_launch(args)  # a launch accelerate would silently degrade is refused in seconds
    checkpoint = checkpoint_to_resume(args)
    adapt_to_checkpoint(args, checkpoint)  # another process count: the same global batch, or refused here
    set_seed(args.seed)
    return model_args, data_args, args, checkpoint


def record_run(model_args, data_args, args, as_parsed: dict, prog: str) -> None:
    """Lock output_dir for this run's life (a second live launch into it is refused) and write
    output_dir/run_config.yaml (for evaluation set-ups and reruns) holding `as_parsed` (run_config_values taken right
    after start_run), once the launch is accepted: the config, the data and the model have all loaded, so a launch
    refused for any of them leaves no output_dir behind."""
    if args.should_save:
        lock_folder(args.output_dir, prog)
        save_run_config(model_args, data_args, args, as_parsed)


def checkpoint_to_resume(args) -> str | None:
    if args.resume_from_checkpoint is not None:
        chosen = args.resume_from_checkpoint
        problem = checkpoint_problem(chosen) if os.path.isdir(chosen) else None
        if problem:
            raise ConfigError(
                f"resume_from_checkpoint={chosen} cannot be resumed from: {problem}. Give an earlier"
                " checkpoint, or leave resume_from_checkpoint unset to resume from the newest complete"
                " one in output_dir."
            )
        return chosen
    last = last_complete_checkpoint(args.output_dir)
    if last is not None:
        logger.info("Resuming from the last complete checkpoint in output_dir: %s", last)
    return last


def train(trainer, checkpoint: str | None):
    """trainer.train, resuming from `checkpoint`; a checkpoint write that fails on a full disk says so. A training
    that raises still gives SIGTERM/SIGINT back to their previous handlers (the Trainer calls on_train_end only when
    it finishes), so a process that goes on, e.g. a sweep, stays stoppable."""
    try:
        with disk_full_explained(trainer.args.output_dir, lambda: trainer.state.global_step):
            return trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException:
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, StopOnSignal):
                callback.on_train_end(trainer.args, trainer.state, trainer.control)
        raise


def save_final_model(trainer) -> None:
    """The trained model into output_dir: refused if a weight is not finite, explained if the disk is full."""
    refuse_non_finite_weights(trainer.model, trainer.args.output_dir, "the final model", trainer.args.device)
    with disk_full_explained(trainer.args.output_dir, lambda: None):
        trainer.save_model(trainer.args.output_dir)
    logger.info("Model saved to %s", trainer.args.output_dir)


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


def stopped_by_signal(trainer, stop) -> int | None:
    """The exit code of a run a signal stopped (128 + the signal; a checkpoint was saved), or None."""
    if stop.signum is None:
        return None
    logger.warning("Stopped by signal %d; relaunch the same command to resume.", stop.signum)
    trainer.accelerator.end_training()
    return 128 + stop.signum


def evaluate_and_save(trainer) -> None:
    """The test split's metrics, logged and written to output_dir/eval_results.json."""
    metrics = {**trainer.evaluate(), "eval_samples": len(trainer.eval_dataset)}
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)


def save_metrics(trainer, metrics: dict) -> None:
    """The training metrics, logged and written (train_results.json), and the trainer's state (trainer_state.json)."""
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()


def finish(trainer) -> int:
    """Close trackers and the process group (gloo threads left running at exit can abort a finished rank: SIGABRT)."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    unlock_folder(trainer.args.output_dir)
    return 0
