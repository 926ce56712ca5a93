"""One live run per output folder. A run holds an exclusive flock on FOLDER/.simpo.lock for its life; a second launch
into the same folder is refused, naming the process that holds it. The operating system drops the lock when its
process ends, however it ends (SIGKILL included), so a killed run never blocks its relaunch.
"""

import fcntl
import os
import socket
import sys

LOCK_FILE = ".simpo.lock"
_held: dict[str, int] = {}  # realpath of the folder -> the open lock file (kept open: closing it drops the lock)


class FolderInUseError(RuntimeError):
    """Another live process writes this folder."""


def lock_folder(folder: str, command: str) -> None:
    """Take `folder`'s lock for this process's life (a no-op if this process holds it). Refused without writing
    anything into a folder another process holds."""
    key = os.path.realpath(folder)
    if key in _held:
        return
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
    _held[key] = fd


def command_line() -> str:
    """This process's command as launched (with the interpreter and any -c code), else sys.argv."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return " ".join(part.decode(errors="replace") for part in f.read().split(b"\0") if part)
    except OSError:
        return " ".join(sys.argv)


def unlock_folder(folder: str) -> None:
    """Drop the lock before the process ends (a process that runs several commands in turn)."""
    fd = _held.pop(os.path.realpath(folder), None)
    if fd is not None:
        os.close(fd)
