"""The Triton path's tile choice, kept on disk: measured once per GPU name, dtype and shape, then reused by every
process and relaunch instead of timing the candidates again (seconds of warm-up each time).

The file (SIMPO_TILE_CACHE, default $XDG_CACHE_HOME/simpo/tiles.json, i.e. ~/.cache/simpo/tiles.json; "off" turns
it off) maps a key (GPU name, dtype, hidden, vocabulary, bias, softcap, token bucket, triton version) to the chosen
(token tile, vocabulary tile). Processes that start together (the ranks of a launch) take an exclusive lock beside
the file around look-up, measurement and write, so one measures and the others read its choice: every rank trains
with the same tiles. Writes are atomic (a temporary file renamed over the old one); a corrupt file is measured over.
The run's KernelLedger (simpo/kernels/ledger.py) counts what it measured, reused and spent measuring, for its summary.

cache_file, read_entry and write_entry are the same file handling for another cache of decisions a device measures
(the start-up self-check's, simpo/train/self_check/).
"""

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time

from simpo.environment import switched_off

logger = logging.getLogger(__name__)


def cache_file(variable: str, name: str) -> str | None:
    """The file a cache keeps: the environment variable's path, None where it is "off" (or another FALSE_WORDS), by
    default $XDG_CACHE_HOME/simpo/<name> (~/.cache/simpo/<name>)."""
    path = os.environ.get(variable)
    if path is not None:
        return None if switched_off(path) else path
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "simpo", name)


def cache_path() -> str | None:
    return cache_file("SIMPO_TILE_CACHE", "tiles.json")


def cache_key(
    device_name: str, dtype, hidden: int, vocab: int, bias: bool, softcap: bool, bucket: int, version: str
) -> str:
    return (
        f"{device_name}|{str(dtype).replace('torch.', '')}|H{hidden}|V{vocab}|bias={int(bias)}|"
        f"softcap={int(softcap)}|N{bucket}|triton {version}"
    )


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # missing, unreadable or corrupt: measure again
        return {}


def _write(path: str, data: dict) -> None:
    directory = os.path.dirname(path) or "."
    stem = os.path.splitext(os.path.basename(path))[0]  # .tiles-*.json beside tiles.json
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{stem}-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(temporary, path)


@contextlib.contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_entry(path: str | None, key: str):
    """The value stored for key in the cache file at path (None: no file, no entry, or a corrupt file)."""
    if not path:
        return None
    with _locked(path):
        return _read(path).get(key)


def write_entry(path: str | None, key: str, value) -> None:
    """Store value (JSON) for key beside the file's other entries; nothing without a path."""
    if path:
        with _locked(path):
            _write(path, {**_read(path), key: value})


def cached_tiles(key: str, measure, ledger) -> tuple[int, int]:
    """The tiles stored for key, else measure() (returns them), stored; `ledger` (a KernelLedger) counts which and
    how long."""
    path = cache_path()
    start = time.perf_counter()
    with _locked(path) if path else contextlib.nullcontext():
        stored = _read(path).get(key) if path else None
        if isinstance(stored, list) and len(stored) == 2 and all(isinstance(t, int) and t > 0 for t in stored):
            ledger.reused += 1
            return stored[0], stored[1]
        tiles = tuple(measure())
        if path:
            _write(path, {**_read(path), key: list(tiles)})
    ledger.measured += 1
    ledger.warmup_seconds += time.perf_counter() - start
    logger.info(
        "Log-prob tiles for %s measured in %.1f s: %s (kept in %s)",
        key,
        time.perf_counter() - start,
        tiles,
        path or "memory only",
    )
    return tiles
