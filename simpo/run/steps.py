"""The steps both training recipes (simpo/train/recipe.py, simpo/sft/recipe.py) share: start a launch (parse, log,
check, find the checkpoint, compare the launch with what it continues, fit it to the checkpoint, seed), the data half
of that comparison, record the launch once accepted (lock output_dir, write run_config.yaml and the run's history),
the callbacks every run has, training with its stop by a signal, the final save, evaluation, and the closing of the
process group. The Launch a recipe gets from start_run holds what the run needs to the end."""

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field

from transformers import set_seed
from transformers.trainer_utils import TrainOutput

from simpo.config.parser import parse_args
from simpo.config.run_record import run_config_values, save_run_config
from simpo.environment import reproducible_numerics
from simpo.errors import AtTheLastStep, CheckpointChanged
from simpo.models.loading import save_config_for_generation
from simpo.reporting.logs import setup_logging
from simpo.run.disk import disk_full_explained
from simpo.run.elastic import ElasticResume, ResumePlan, adapt_to_checkpoint
from simpo.run.finite import refuse_non_finite_weights
from simpo.run.folder_lock import FolderLock, lock_folder
from simpo.run.launch import check_build_locks, check_launch
from simpo.run.record import RECORD_FILE, checkpoint_digest_problem, final_files, folder_files, write_record
from simpo.run.relaunch import (
    Relaunch,
    RelaunchRecord,
    compare_settings,
    history_for_card,
    record_launch,
    trajectory_settings,
)
from simpo.run.resume import StopAtTheLastStep, checkpoint_state, checkpoint_to_resume
from simpo.run.signals import StopOnSignal

logger = logging.getLogger("simpo")


@dataclass
class Launch:
    """One launch of a training recipe, as start_run accepted it: the three argument groups, the checkpoint it resumes
    (None for a fresh run) and how the launch was fitted to it (resume_plan: another process count; None otherwise),
    how it stands to what it continues (relaunch: simpo/run/relaunch.py), the settings as parsed (what
    run_config.yaml records), its stop on a signal, and, once record_run took it, the lock on output_dir."""

    model_args: object
    data_args: object
    args: object
    checkpoint: str | None
    resume_plan: ResumePlan | None
    relaunch: Relaunch
    as_parsed: dict
    prog: str
    folder_lock: FolderLock | None = None
    stop: StopOnSignal = field(default_factory=StopOnSignal)

    def record(self, step: int) -> dict:
        """What shaped this run's trajectory up to `step` (simpo/run/record.py's record, without its files)."""
        return {"recipe": self.prog, "step": step, "settings": self.relaunch.settings, "data": self.relaunch.data}

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
    find the checkpoint to resume, compare the launch's settings with what it continues (simpo/run/relaunch.py),
    refuse a DeepSpeed checkpoint whose files changed, fit the launch to the checkpoint (simpo/run/elastic.py) and
    seed. Nothing is written yet: record_run does, once the data and model have loaded."""
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
    relaunch = compare_settings(
        args, trajectory_settings(run_config_values(model_args, data_args, args), prog), checkpoint
    )
    refuse_changed_checkpoint(args, checkpoint)  # before DeepSpeed (or its universal conversion) unpickles it
    plan = adapt_to_checkpoint(args, checkpoint)  # another process count: the same global batch, or refused here
    set_seed(args.seed)
    # recorded once the launch is accepted (a recipe sets some arguments, e.g. model_init_kwargs, before training);
    # resume_with_changes is this launch's permission, not a setting of the run: a relaunch from run_config.yaml
    # must ask for it again
    as_parsed = {**run_config_values(model_args, data_args, args), "resume_with_changes": False}
    return Launch(model_args, data_args, args, checkpoint, plan, relaunch, as_parsed, prog)


def on_main_process(args, compute):
    """compute() on the main process alone, its result given to every process (one reads the files, all decide)."""
    if args.world_size <= 1:
        return compute()
    import torch.distributed as dist

    result = [compute() if args.process_index == 0 else None]
    dist.broadcast_object_list(result, src=0)
    return result[0]


def refuse_changed_checkpoint(args, checkpoint: str | None) -> None:
    """Refuse to resume a DeepSpeed checkpoint whose files are not the ones its run saved (simpo/run/record.py): its
    load unpickles them, and a pickle runs whatever code it names."""
    if checkpoint is None:
        return
    problem = on_main_process(args, lambda: checkpoint_digest_problem(checkpoint))
    if problem:
        raise CheckpointChanged(
            f"Not resuming {checkpoint}: {problem}. DeepSpeed loads a checkpoint's files with pickle, which runs"
            " any code a file holds, so only files byte for byte as their run saved them are loaded"
            " (docs/bad-input-and-resume.md, Trust). Restore the checkpoint, or resume from an earlier one"
            " (resume_from_checkpoint=...), or remove it; a checkpoint copied from elsewhere is resumed only if"
            f" its {RECORD_FILE} came with it."
        )


def record_run(launch: Launch) -> None:
    """Lock output_dir for this run's life (a second live launch into it is refused) and write
    output_dir/run_config.yaml (for evaluation set-ups and reruns) holding the settings as parsed, once the launch is
    accepted: the config, the data and the model have all loaded, so a launch refused for any of them leaves no
    output_dir behind."""
    args = launch.args
    if args.should_save:
        launch.folder_lock = lock_folder(args.output_dir, launch.prog)
        save_run_config(launch.model_args, launch.data_args, args, launch.as_parsed)
        if args.do_train:
            record_launch(launch)


def run_callbacks(launch: Launch) -> list:
    """The callbacks every training run has, in this order: the stop on a signal, no step past the end of a resumed
    run, the launch layout each checkpoint records (elastic resume), and the record of each checkpoint (last: it
    takes the digests of what the others wrote)."""
    return [launch.stop, StopAtTheLastStep(), ElasticResume(launch.resume_plan), RelaunchRecord(launch)]


def train(trainer, launch: Launch):
    """trainer.train, resuming from the launch's checkpoint; a checkpoint write that fails on a full disk says so. A
    training that raises still gives the stop signals back to their previous handlers, so a process that goes on,
    e.g. a sweep, stays stoppable."""
    try:
        with disk_full_explained(trainer.args.output_dir, lambda: trainer.state.global_step):
            return trainer.train(resume_from_checkpoint=launch.checkpoint)
    except AtTheLastStep:
        launch.stop.on_train_end(trainer.args, trainer.state, trainer.control)
        logger.info(
            "%s holds the run's last step (%d): nothing left to train; the final files are written from it.",
            launch.checkpoint,
            trainer.state.global_step,
        )
        return TrainOutput(trainer.state.global_step, None, {"train_runtime": 0.0})
    except BaseException:
        launch.stop.give_back()
        raise


FINAL_PARTIAL = "_final_save.partial"  # "_": push_to_hub leaves it out


def save_final(trainer, launch: Launch, metrics: dict, card: dict) -> None:
    """The end of a run that trained, written so that it is finished exactly when everything verifies: the final
    model (refused if a weight is not finite, explained if the disk is full) is saved into a temporary folder and
    renamed into output_dir, then the metrics and trainer state, the model card (`card`: the trainer's
    create_model_card arguments, plus the settings changed on the way), and last output_dir's record listing the size
    of every one of these files (simpo/run/record.py). A run killed anywhere before that record leaves none, so its
    relaunch rewrites the final files from the last checkpoint that verifies."""
    try:
        write_final(trainer, launch, metrics, card)
    except BaseException:
        launch.stop.give_back()  # a process that goes on stays stoppable
        raise


def write_final(trainer, launch: Launch, metrics: dict, card: dict) -> None:
    args, accelerator = trainer.args, trainer.accelerator
    refuse_non_finite_weights(trainer.model, args.output_dir, "the final model", args.device)
    partial = os.path.join(args.output_dir, FINAL_PARTIAL)
    if accelerator.is_main_process:
        record = os.path.join(args.output_dir, RECORD_FILE)
        if os.path.exists(record):
            os.remove(record)  # output_dir no longer holds a finished run
        shutil.rmtree(partial, ignore_errors=True)  # left by a launch killed while saving
    accelerator.wait_for_everyone()
    with disk_full_explained(args.output_dir, lambda: None):
        trainer.save_model(partial, _internal_call=True)  # every process (ZeRO-3 gathers the weights), no push yet
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_config_for_generation(trainer.model, partial)
            names = move_into(partial, args.output_dir)
        save_metrics(trainer, metrics)
    if accelerator.is_main_process:
        trainer.create_model_card(**card)
        card_path = os.path.join(args.output_dir, "README.md")
        if os.path.exists(card_path) and (history := history_for_card(args.output_dir)):
            with open(card_path, "a") as f:
                f.write(history)
        written = ("train_results.json", "all_results.json", "trainer_state.json", "README.md")
        names = sorted({*names, *(n for n in written if os.path.exists(os.path.join(args.output_dir, n)))})
        write_record(
            args.output_dir, {**launch.record(trainer.state.global_step), "files": final_files(args.output_dir, names)}
        )
    accelerator.wait_for_everyone()
    logger.info("Model saved to %s", args.output_dir)


def move_into(partial: str, output_dir: str) -> list[str]:
    """Rename every entry of `partial` into output_dir (each rename atomic), then remove `partial`; returns the files
    moved, relative to output_dir."""
    names = folder_files(partial)
    for entry in sorted(os.listdir(partial)):
        target = os.path.join(output_dir, entry)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(partial, entry), target)
    os.rmdir(partial)
    return names


def no_training(trainer) -> bool:
    """Whether this launch trains nothing: evaluation alone (do_train: false, done here)."""
    if trainer.args.do_train:
        return False
    evaluate_and_save(trainer)
    logger.info("Evaluation only (do_train: false): eval_results.json is in %s", trainer.args.output_dir)
    return True


def stopped_by_signal(trainer, launch: Launch, final_saved: bool = False) -> int | None:
    """The exit code of a run a signal stopped (128 + the signal), or None. After training (final_saved false): a
    signal that came while it trained, so a checkpoint was saved and relaunching resumes it (one that came once
    training had ended waits for the final save). After the final save: any signal; the run is finished."""
    stop = launch.stop
    if stop.signum is None or not (final_saved or stop.while_training):
        return None
    stop.give_back()
    if final_saved:
        logger.warning(
            "Stopped by signal %d once the final model was written: the run is finished (what follows the final"
            " save, e.g. evaluation, curves and push_to_hub, was skipped).",
            stop.signum,
        )
    else:
        logger.warning("Stopped by signal %d; relaunch the same command to resume.", stop.signum)
        # every process stopped at the same step (StopOnSignal agrees on it): none leaves while another still writes
        # the checkpoint (torchrun would stop the others, mid-write, when the first exits with 128 + n)
        trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if launch.folder_lock is not None:
        launch.folder_lock.release()
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
    launch.stop.give_back()
    if launch.folder_lock is not None:
        launch.folder_lock.release()
    return 0
