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


class StopOnSignal(TrainerCallback):
    """On SIGTERM or SIGINT, finish the current optimizer step, save a checkpoint (unless save_strategy is "no")
    and stop; `signum` tells the caller to exit instead of saving the final model."""

    def __init__(self):
        self.signum = None

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)

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
