"""A checkpoint or the final model written to a full disk: said so, with where, how much is free, and which
checkpoint is intact (the one a relaunch resumes)."""

import contextlib
import errno
import os
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from simpo.errors import DiskFullError
from simpo.run.checkpoints import last_complete_checkpoint

# What a write to a full disk raises: torch.save's C++ stream ("basic_ios::clear: iostream error", or its zip
# writer's "file write failed" / "unexpected pos"), safetensors' "No space left on device", OSError ENOSPC.
DISK_FULL = ("iostream error", "file write failed", "unexpected pos", "No space left", "StorageFull")


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
