"""A stop asked for by a signal (SIGTERM from a scheduler, SIGINT from Ctrl-C) ends the current optimizer step, saves
a checkpoint and stops, instead of losing the work since the last save."""

import logging
import signal

from transformers import TrainerCallback
from transformers.trainer_utils import SaveStrategy

logger = logging.getLogger(__name__)


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
