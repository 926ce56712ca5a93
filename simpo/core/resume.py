"""Never lose work: resume only from complete checkpoints, and checkpoint before exiting on SIGTERM/SIGINT."""

import json
import logging
import os
import re
import signal

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete(checkpoint: str) -> bool:
    """The Trainer writes trainer_state.json last, after weights, optimizer and RNG states: a checkpoint killed while
    being written lacks it or holds a truncated one."""
    try:
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    names = os.listdir(checkpoint)
    return any(name.endswith((".safetensors", ".bin")) or name.startswith("global_step") for name in names)


def last_complete_checkpoint(output_dir: str) -> str | None:
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT_RE.match(name))
    )
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if is_complete(path):
            return path
        logger.warning("Skipping incomplete checkpoint %s (interrupted while it was written).", path)
    return None


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
    return (f"Nothing left to train: {checkpoint} holds step {step} of {last}, and the finished run's results are in"
            f" {trainer.args.output_dir} (kept). To train more, raise max_steps or num_train_epochs; to start"
            " afresh, use another output_dir.")


class StopOnSignal(TrainerCallback):
    """On SIGTERM or SIGINT, finish the current optimizer step, save a checkpoint (unless save_strategy is "no")
    and stop; `signum` tells the caller to exit instead of saving the final model."""

    def __init__(self):
        self.signum = None
        self.previous_handlers = {}

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous_handlers[sig] = signal.signal(sig, self._request_stop)

    def on_train_end(self, args, state, control, **kwargs):
        # Outside training a signal does what it did before (e.g. ends a process that runs several trainings).
        for sig, handler in self.previous_handlers.items():
            signal.signal(sig, handler)

    def _request_stop(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("Received %s: stopping after this step.", signal.Signals(signum).name)

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            control.should_save = args.save_strategy != SaveStrategy.NO
            control.should_training_stop = True
        return control
