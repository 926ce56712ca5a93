"""Where a launch resumes from: the checkpoint it names or the newest one in output_dir that verifies, the trainer
state it starts from, and whether a relaunch has anything left to train."""

import json
import logging
import os

from simpo.errors import ConfigError
from simpo.run.checkpoints import checkpoint_problem, last_complete_checkpoint

logger = logging.getLogger(__name__)


def checkpoint_state(checkpoint: str | None) -> dict | None:
    """The trainer state a resumed run starts from (its step, log history and token count), None for a fresh run."""
    if checkpoint is None:
        return None
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        return json.load(f)


def finished_run(trainer, checkpoint: str | None) -> str | None:
    """Why a relaunch has nothing to train, or None: its checkpoint already holds the run's last optimizer step and
    the finished run's results are in output_dir (training again would overwrite them with an empty run's)."""
    if checkpoint is None or not os.path.exists(os.path.join(trainer.args.output_dir, "train_results.json")):
        return None
    step = checkpoint_state(checkpoint)["global_step"]
    last = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
    if step < last:
        return None
    return (
        f"Nothing left to train: {checkpoint} holds step {step} of {last}, and the finished run's results are in"
        f" {trainer.args.output_dir} (kept). To train more, raise max_steps or num_train_epochs; to start"
        " afresh, use another output_dir."
    )


def checkpoint_to_resume(args) -> str | None:
    """resume_from_checkpoint when it is set (refused when it does not verify), else the newest checkpoint in
    output_dir that verifies, else None (a fresh run)."""
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
