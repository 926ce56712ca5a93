"""What a run records beside what it saves: RECORD_FILE in each checkpoint and, once the run has finished, in
output_dir.

A record holds what shaped the trajectory up to its step (the recipe, the settings that change what is trained, the
training data's fingerprint; simpo/run/relaunch.py compares a relaunch with it), and the files it vouches for:

- in a DeepSpeed checkpoint, the sha256 of every file. DeepSpeed loads its checkpoint files with pickle
  (`torch.load(..., weights_only=False)`, hard-wired in DeepSpeed 0.19: no setting turns it off), and a pickle runs
  whatever code it names, so a checkpoint whose files are not byte for byte the ones its run saved is not resumed
  (checkpoint_digest_problem). Plain checkpoints need none: the Trainer loads them with weights_only=True.
- in output_dir, the size of every file of the final save. It is written last, so a run is finished exactly when its
  record is there and every file it lists has that size and a sound structure (final_files_problem).

Every record is written whole or not at all (a temporary file, then a rename).
"""

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

from simpo.run.checkpoints import RECORD_FILE, file_problem

HASH_CHUNK = 16 << 20


def read_record(folder: str) -> dict | None:
    """The record in `folder`, or None when there is none (or it cannot be read: written by no finished save)."""
    try:
        with open(os.path.join(folder, RECORD_FILE)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(folder: str, record: dict) -> None:
    write_json_atomically(os.path.join(folder, RECORD_FILE), record)


def write_json_atomically(path: str, value) -> None:
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def folder_files(folder: str) -> list[str]:
    """Every file under `folder` but its RECORD_FILE, as paths relative to it, sorted."""
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.normpath(os.path.join(os.path.relpath(root, folder), name))
            if path != RECORD_FILE:
                found.append(path)
    return sorted(found)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(folder: str, paths: list[str]) -> dict[str, str]:
    """sha256 of each of `paths` (relative to `folder`), several files at once (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(paths, pool.map(lambda path: sha256(os.path.join(folder, path)), paths)))


def is_deepspeed_checkpoint(checkpoint: str) -> bool:
    """DeepSpeed writes `latest` (naming its global_step folder) into every checkpoint it saves."""
    return os.path.isfile(os.path.join(checkpoint, "latest"))


def record_digests(checkpoint: str, record: dict) -> dict:
    """`record` with the sha256 of every file now in `checkpoint` (the ones already recorded kept)."""
    recorded = dict(record.get("sha256", {}))
    new = [path for path in folder_files(checkpoint) if path not in recorded]
    return {**record, "sha256": {**recorded, **file_digests(checkpoint, new)}}


def checkpoint_digest_problem(checkpoint: str) -> str | None:
    """Why a DeepSpeed checkpoint's files are not the ones its run saved, or None (also for a plain checkpoint)."""
    if not is_deepspeed_checkpoint(checkpoint):
        return None
    record = read_record(checkpoint)
    if record is None or "sha256" not in record:
        return (
            f"it has no {RECORD_FILE} with the sha256 of its files (written once the checkpoint is complete: it was"
            " interrupted, or the record was removed)"
        )
    recorded, present = record["sha256"], folder_files(checkpoint)
    added = sorted(set(present) - set(recorded))
    if added:
        return f"{added[0]} was not there when the checkpoint was saved{more(added)}"
    missing = sorted(set(recorded) - set(present))
    if missing:
        return f"{missing[0]} is missing{more(missing)}"
    changed = [path for path, digest in file_digests(checkpoint, present).items() if digest != recorded[path]]
    if changed:
        return f"{changed[0]} changed since it was saved (its sha256 is not the one recorded){more(changed)}"
    return None


def more(paths: list[str]) -> str:
    return f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""


def final_files(output_dir: str, names: list[str]) -> dict[str, int]:
    """The size of each of the final save's files (`names`, relative to output_dir): what its record vouches for."""
    return {name: os.path.getsize(os.path.join(output_dir, name)) for name in names}


def final_files_problem(output_dir: str, record: dict) -> str | None:
    """Why the final files a finished run's record lists are not what it wrote (missing, another size, cut short),
    or None."""
    if not record.get("files"):
        return f"its {RECORD_FILE} lists no files"
    for name, size in sorted(record["files"].items()):
        path = os.path.join(output_dir, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, not the {size} written"
        problem = file_problem(path)
        if problem:
            return f"{name} {problem}"
    return None
