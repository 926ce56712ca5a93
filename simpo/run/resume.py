"""Where a launch resumes from: the checkpoint it names or the newest one in output_dir that verifies, and the trainer
state it starts from (whether it may resume it at all: simpo/run/relaunch.py)."""

import json
import logging
import os

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from simpo.errors import AtTheLastStep, ConfigError
from simpo.run.checkpoints import CHECKPOINT_RE, checkpoint_problem, last_complete_checkpoint

logger = logging.getLogger(__name__)


def checkpoint_state(checkpoint: str | None) -> dict | None:
    """The trainer state a resumed run starts from (its step, log history and token count), None for a fresh run."""
    if checkpoint is None:
        return None
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        return json.load(f)


def checkpoint_to_resume(args) -> str | None:
    """resume_from_checkpoint when it is set (a checkpoint folder, refused when it is not there or does not verify; or
    true, transformers' idiom for the newest complete checkpoint in output_dir, refused when there is none), else the
    newest checkpoint in output_dir that verifies, else None (a fresh run). Folders named like checkpoints that a
    relaunch does not resume (checkpoint-final) are named in a warning."""
    chosen = args.resume_from_checkpoint
    if chosen is not None and chosen.strip().lower() in ("false", "no", "none", ""):
        chosen = args.resume_from_checkpoint = None
    warn_of_unresumed_folders(args.output_dir)
    if chosen is not None and chosen.strip().lower() in ("true", "yes", "last"):
        last = last_complete_checkpoint(args.output_dir)
        if last is None:
            raise ConfigError(
                f"resume_from_checkpoint: true resumes the newest complete checkpoint in output_dir, but"
                f" {args.output_dir} holds none: leave resume_from_checkpoint unset to start afresh, or give the"
                " checkpoint folder to resume."
            )
        args.resume_from_checkpoint = last
        logger.info("resume_from_checkpoint: true: resuming from %s", last)
        return last
    if chosen is not None:
        if not os.path.isdir(chosen):
            found = last_complete_checkpoint(args.output_dir)
            hint = f" ({found} is the newest complete checkpoint in output_dir)" if found else ""
            raise ConfigError(
                f"resume_from_checkpoint={chosen} is not a folder{' (it is a file)' if os.path.exists(chosen) else ''}:"
                f" give a checkpoint folder (output_dir/checkpoint-<step>){hint}, true for the newest complete one, or"
                " leave it unset."
            )
        problem = checkpoint_problem(chosen)
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


def warn_of_unresumed_folders(output_dir: str) -> None:
    """A folder named checkpoint-<something other than a step> is never resumed: say so rather than pass it by."""
    if not os.path.isdir(output_dir):
        return
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and not CHECKPOINT_RE.match(name) and os.path.isdir(path):
            logger.warning(
                "%s is not resumed: a relaunch resumes only folders named %s-<step>. To resume it, give"
                " resume_from_checkpoint=%s, or rename it to %s-<its global_step>.",
                path,
                PREFIX_CHECKPOINT_DIR,
                path,
                PREFIX_CHECKPOINT_DIR,
            )


class StopAtTheLastStep(TrainerCallback):
    """A run resumed from a checkpoint of its last step (stopped by a signal on that step, or killed before its final
    save finished) has nothing left to train, but transformers' loop would still train one step past the end (it
    checks for the end only after a step): stop it once the checkpoint is loaded, before any step (AtTheLastStep,
    which simpo/run/steps.py's train turns into a run of no steps)."""

    def on_train_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise AtTheLastStep(f"Resumed at step {state.global_step} of {state.max_steps}: nothing left to train.")
