"""One live run per output folder. A run holds an exclusive flock on FOLDER/_simpo.lock for its life; a second launch
into the same folder is refused, naming the process that holds it. The operating system drops the lock when its
process ends, however it ends (SIGKILL included), so a killed run never blocks its relaunch.
"""

import fcntl
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import ClassVar

from simpo.errors import FolderInUseError

# "_": the Trainer's push_to_hub leaves out files named _* (and the record names the command, whose arguments
# may hold a token: those are masked, below)
LOCK_FILE = "_simpo.lock"
SECRET_ARGUMENT = re.compile(r"^(--[\w-]*token)(=.+)?$")


@dataclass
class FolderLock:
    """This process's hold on one folder: the open lock file (closing it drops the flock). The run that took it owns
    it (simpo/run/steps.py's Launch) and releases it when it ends; a command that runs once per process keeps it
    for the process's life. A flock belongs to the open file, so a second lock_folder of the same folder by this
    process must return this one, not open another (the two would refuse each other): FolderLock.live finds it."""

    folder: str
    fd: int
    live: ClassVar[dict[str, "FolderLock"]] = {}  # realpath of the folder -> this process's unreleased lock

    def release(self) -> None:
        """Drop the lock (a process that runs several commands in turn); a no-op once released."""
        if FolderLock.live.get(os.path.realpath(self.folder)) is self:
            del FolderLock.live[os.path.realpath(self.folder)]
            os.close(self.fd)


def lock_folder(folder: str, command: str) -> FolderLock:
    """Take `folder`'s lock (or return the one this process holds). Refused without writing anything into a folder
    another process holds."""
    key = os.path.realpath(folder)
    if key in FolderLock.live:
        return FolderLock.live[key]
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise FolderInUseError(
            f"{folder} is in use by a run that is still going ({holder}): two runs in one folder would overwrite each"
            f" other's checkpoints and results. Wait for it to end (or stop it), or give {command} another folder."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {command_line()}\n".encode(), 0)
    lock = FolderLock.live[key] = FolderLock(folder, fd)
    return lock


def command_line() -> str:
    """This process's command as launched (with the interpreter and any -c code), else sys.argv, with the value of
    every --*token argument masked."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            parts = [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        parts = list(sys.argv)
    return " ".join(masked_secrets(parts))


def masked_secrets(parts: list[str]) -> list[str]:
    """`--hub_token=hf_x` and `--hub_token hf_x` (any key ending in token) with the value as <TOKEN>."""
    shown = list(parts)
    for i, part in enumerate(parts):
        if secret := SECRET_ARGUMENT.match(part):
            if secret[2]:
                shown[i] = f"{secret[1]}=<TOKEN>"
            elif i + 1 < len(parts):
                shown[i + 1] = "<TOKEN>"
    return shown


def unlock_folder(folder: str) -> None:
    """Drop this process's lock of `folder`, if it holds one."""
    lock = FolderLock.live.get(os.path.realpath(folder))
    if lock is not None:
        lock.release()
