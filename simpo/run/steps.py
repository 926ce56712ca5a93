"""The steps both training recipes (simpo/train/recipe.py, simpo/sft/recipe.py) share: start a launch (parse, log,
check, find the checkpoint, fit the launch to it, seed), record it once accepted (lock output_dir, write
run_config.yaml), the launches that train nothing, training with its stop by a signal, the final save, evaluation, and
the closing of the process group. The Launch a recipe gets from start_run holds what the run needs to the end."""

import logging
import sys
from dataclasses import dataclass

from transformers import set_seed

from simpo.config.parser import parse_args
from simpo.config.run_record import run_config_values, save_run_config
from simpo.environment import reproducible_numerics
from simpo.reporting.logs import setup_logging
from simpo.run.disk import disk_full_explained
from simpo.run.elastic import ResumePlan, adapt_to_checkpoint
from simpo.run.finite import refuse_non_finite_weights
from simpo.run.folder_lock import FolderLock, lock_folder
from simpo.run.launch import check_build_locks, check_launch
from simpo.run.resume import checkpoint_state, checkpoint_to_resume, finished_run
from simpo.run.signals import StopOnSignal

logger = logging.getLogger("simpo")


@dataclass
class Launch:
    """One launch of a training recipe, as start_run accepted it: the three argument groups, the checkpoint it resumes
    (None for a fresh run) and how the launch was fitted to it (resume_plan: another process count; None otherwise),
    the settings as parsed (what run_config.yaml records), and, once record_run took it, the lock on output_dir."""

    model_args: object
    data_args: object
    args: object
    checkpoint: str | None
    resume_plan: ResumePlan | None
    as_parsed: dict
    prog: str
    folder_lock: FolderLock | None = None

    @property
    def resume_note(self) -> str | None:
        """For the start summary: what an elastic resume changed."""
        return self.resume_plan.note if self.resume_plan is not None else None

    @property
    def resumed_at(self) -> int | None:
        """The step of the checkpoint this launch resumed (its time and throughput are counted from there)."""
        return (checkpoint_state(self.checkpoint) or {}).get("global_step")


def start_run(argv: list[str] | None, argument_groups: tuple, prog: str, description: str) -> Launch:
    """Parse (model, data and the recipe's training arguments), log them, refuse a launch accelerate would degrade,
    find the checkpoint to resume (fitting the launch to it: simpo/run/elastic.py) and seed. Nothing is written yet:
    record_run does, once the data and model have loaded."""
    reproducible_numerics()  # before MKL's first call (a library caller's process goes through no command)
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
    plan = adapt_to_checkpoint(args, checkpoint)  # another process count: the same global batch, or refused here
    set_seed(args.seed)
    # recorded once the launch is accepted (a recipe sets some arguments, e.g. model_init_kwargs, before training)
    as_parsed = run_config_values(model_args, data_args, args)
    return Launch(model_args, data_args, args, checkpoint, plan, as_parsed, prog)


def record_run(launch: Launch) -> None:
    """Lock output_dir for this run's life (a second live launch into it is refused) and write
    output_dir/run_config.yaml (for evaluation set-ups and reruns) holding the settings as parsed, once the launch is
    accepted: the config, the data and the model have all loaded, so a launch refused for any of them leaves no
    output_dir behind."""
    args = launch.args
    if args.should_save:
        launch.folder_lock = lock_folder(args.output_dir, launch.prog)
        save_run_config(launch.model_args, launch.data_args, args, launch.as_parsed)


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


def finish(trainer, launch: Launch) -> int:
    """Close trackers and the process group (gloo threads left running at exit can abort a finished rank: SIGABRT),
    and give output_dir's lock back."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if launch.folder_lock is not None:
        launch.folder_lock.release()
    return 0
