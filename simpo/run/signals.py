"""A stop asked for by a signal ends the current optimizer step, saves a checkpoint and stops, instead of losing the
work since the last save: SIGTERM (a scheduler's stop, `scancel`), SIGUSR1 (SLURM's warning before the time limit,
`--signal=USR1@90`), SIGHUP (the terminal closed) and SIGINT (Ctrl-C). A checkpoint is saved whatever save_strategy
says: a user paying for the hours since the last save wants them kept, and with save_strategy "no" there is no other
checkpoint at all (the relaunch would start over).

The handlers stay until the run gives them back (StopOnSignal.give_back, once the final model is written): a signal
during the final save lets it finish (the model is written whole) and the run stops after it. A repeated signal is
the same request (a scheduler and a launcher often both deliver it); only a second Ctrl-C stops at once.

In a distributed run the processes agree at every optimizer step's end whether one of them was asked to stop (one
scalar all-reduce): a signal reaches the processes at slightly different moments, and a process that stopped a step
before the others would save its checkpoint (a collective under ZeRO-3 and FSDP) while they run the next step."""

import logging
import signal

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


class StopOnSignal(TrainerCallback):
    """On a stop signal, finish the current optimizer step, save a checkpoint and stop; `signum` tells the caller to
    exit instead of saving the final model (or, when it came during the final save, to stop once it is written)."""

    def __init__(self):
        self.signum = None
        self.training = False
        self.while_training = False  # whether the signal came while training (so a checkpoint was saved)
        self.saved = False  # whether a checkpoint was saved since it came
        self.previous_handlers = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        for sig in STOP_SIGNALS:
            if sig not in self.previous_handlers:
                self.previous_handlers[sig] = signal.signal(sig, self._request_stop)

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False  # the handlers stay for the final save: give_back returns them
        if self.signum is not None and not self.saved:
            self.while_training = False  # it came after the last step's end: the final save runs, then the stop

    def on_save(self, args, state, control, **kwargs):
        self.saved = self.signum is not None

    def give_back(self) -> None:
        """The handlers there were before training (a process that goes on, e.g. a sweep, stays stoppable)."""
        for sig, handler in self.previous_handlers.items():
            signal.signal(sig, handler)
        self.previous_handlers = {}

    def _request_stop(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            if signum == signal.SIGINT:  # Ctrl-C twice: stop now
                raise KeyboardInterrupt
            logger.warning("Received %s again: already stopping.", name)
            return
        self.signum, self.while_training = signum, self.training
        if self.training:
            logger.warning("Received %s: stopping after this step.", name)
        else:
            logger.warning("Received %s: stopping once the final model is written.", name)

    def on_step_end(self, args, state, control, **kwargs):
        asked = agreed_signal(self.signum, args.device)
        if asked is not None and self.signum is None:  # another process was asked: stop at the same step
            self.signum, self.while_training = asked, True
            logger.warning("Another process received %s: stopping after this step.", signal.Signals(asked).name)
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


def agreed_signal(signum: int | None, device) -> int | None:
    """The stop signal any process of the run received (the highest number, when several did), None when none did;
    in a single process, its own. Every process of a distributed run must call it at the same points."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return signum
    if torch.distributed.get_world_size() == 1:
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item()) or None
