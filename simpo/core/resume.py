"""Never lose work: resume only from complete checkpoints, and checkpoint before exiting on SIGTERM/SIGINT."""

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import zipfile

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

from simpo.data.errors import SimpoError

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(checkpoint: str) -> str | None:
    """Why the Trainer could not resume from `checkpoint`, or None. The Trainer writes trainer_state.json last, so a
    checkpoint killed while being written lacks it; a file cut short (a full disk, a copy that stopped) is found by
    its own structure: a safetensors header that does not cover the file, a torch.save zip without its closing
    directory. Only sizes and headers are read, never the tensors."""
    try:
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            json.load(f)
    except (OSError, ValueError):
        return "no complete trainer_state.json (interrupted while it was written)"
    names = os.listdir(checkpoint)
    if not any(name.endswith((".safetensors", ".bin")) or name.startswith("global_step") for name in names):
        return "no model weights"
    for folder, _, files in os.walk(checkpoint):
        for name in sorted(files):
            path = os.path.join(folder, name)
            problem = file_problem(path)
            if problem:
                return f"{os.path.relpath(path, checkpoint)} {problem}"
    return index_problem(checkpoint)


def file_problem(path: str) -> str | None:
    """What is wrong with one checkpoint file, judged from its size and header; None for kinds not checked."""
    if path.endswith(".safetensors"):
        return safetensors_problem(path)
    if path.endswith((".pt", ".pth", ".bin")):
        return torch_file_problem(path)
    return None


def safetensors_problem(path: str) -> str | None:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"is cut short ({size} bytes, no header)"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"is cut short (its header alone needs {length + 8} bytes, the file has {size})"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return "has an unreadable header"
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + length + end != size:
        return f"is cut short (its header describes {8 + length + end} bytes, the file has {size})"
    return None


def torch_file_problem(path: str) -> str | None:
    """torch.save writes a zip archive whose directory comes last: a file cut anywhere loses it."""
    size = os.path.getsize(path)
    if size == 0:
        return "is empty"
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return None  # the legacy (pre-zip) format: nothing cheap to check
    try:
        with zipfile.ZipFile(path) as archive:
            if any(info.header_offset + info.compress_size > size for info in archive.infolist()):
                return "is cut short (an entry ends past the end of the file)"
    except (zipfile.BadZipFile, OSError) as err:
        return f"is cut short or damaged (not a complete zip archive: {err})"
    return None


def index_problem(checkpoint: str) -> str | None:
    """Sharded weights: every shard the index names must be there (each one was checked above)."""
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(checkpoint, name)
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                shards = set(json.load(f)["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return f"{name} is cut short or damaged"
        missing = sorted(shard for shard in shards if not os.path.exists(os.path.join(checkpoint, shard)))
        if missing:
            return f"lacks {missing[0]}, a shard its {name} names"
    return None


def last_complete_checkpoint(output_dir: str, before: int | None = None) -> str | None:
    """The newest checkpoint in output_dir that verifies (checkpoint_problem), among those before step `before` when
    given (not the one being written); each newer one is skipped with a warning that says why."""
    if not os.path.isdir(output_dir):
        return None
    found = ((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT_RE.match(name)))
    steps = sorted((step, name) for step, name in found if before is None or step < before)
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping incomplete checkpoint %s: %s.", path, problem)
    return None


def resume_advice(output_dir: str) -> str:
    """Which checkpoint a relaunch would resume from, for error messages: the newest that verifies."""
    last = last_complete_checkpoint(output_dir)
    if last is None:
        return f"no checkpoint in {output_dir} is complete yet, so a relaunch starts afresh"
    return f"relaunching the same command resumes from {last}, the last complete checkpoint"


# What a write to a full disk raises: torch.save's C++ stream ("basic_ios::clear: iostream error", or its zip
# writer's "file write failed" / "unexpected pos"), safetensors' "No space left on device", OSError ENOSPC.
DISK_FULL = ("iostream error", "file write failed", "unexpected pos", "No space left", "StorageFull")


class DiskFullError(SimpoError, OSError):
    """A checkpoint or the final model could not be written because the disk is full."""


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    kind = isinstance(err, (RuntimeError, OSError)) or type(err).__name__ == "SafetensorError"
    return kind and any(sign in str(err) for sign in DISK_FULL)


@contextlib.contextmanager
def disk_full_explained(output_dir: str, saving_step):
    """Turn a write that failed on a full disk into a DiskFullError that says so, where, and which checkpoint is
    intact. `saving_step()` gives the step of the checkpoint being written, None for the final model."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise DiskFullError(disk_full_message(output_dir, saving_step(), err)) from err


def disk_full_message(output_dir: str, step: int | None, err: BaseException) -> str:
    being = output_dir if step is None else os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
    free = shutil.disk_usage(output_dir).free / 2**30 if os.path.isdir(output_dir) else float("nan")
    intact = last_complete_checkpoint(output_dir, before=step)
    message = (
        f"The disk is full: writing {being} failed ({type(err).__name__}: {err}; {free:.2f} GiB free now on"
        f" the disk holding {output_dir}). "
    )
    if intact is None:
        message += "No complete checkpoint was saved before it: free space, then relaunch to start afresh."
    else:
        message += (
            f"{intact}, the last complete checkpoint, is intact: free space (or set save_total_limit), then"
            " relaunch the same command to resume from it."
        )
    if step is not None:
        message += f" {being} is incomplete: a relaunch skips it, and deleting it frees space."
    return message


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
