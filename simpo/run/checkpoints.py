"""Which checkpoints can be resumed from: a checkpoint verifies when its files are complete (judged from sizes and
headers, never the tensors), and the newest one that verifies is the one a relaunch resumes."""

import json
import logging
import os
import re
import zipfile

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
RECORD_FILE = "trained_with.json"  # what a checkpoint was trained with, written last (simpo/run/record.py)


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
    if "latest" in names and RECORD_FILE not in names:  # a DeepSpeed checkpoint resumes only with its files' digests
        return f"no {RECORD_FILE} (the record of its files, written last: interrupted before it)"
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
