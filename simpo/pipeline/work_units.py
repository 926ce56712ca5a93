"""Resumable, data-parallel batch jobs (generation, reward scoring) without a process group.

A job is a fixed list of units of work, planned the same way by every process from the same inputs. Process `rank`
of `world` takes units rank, rank + world, ...; each finished unit is written as one file, atomically (a temporary
file renamed into place), so a killed run leaves only whole units behind and a relaunch skips them: no unit is done
twice into the output or lost. The main process then waits for every unit file and merges them in plan order, so the
result does not depend on the number of processes or on where a run was resumed.
"""

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm.auto import tqdm

from simpo.environment import launched_processes, launched_rank
from simpo.errors import DataError
from simpo.run.folder_lock import LOCK_FILE, lock_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    name: str  # its file under the store, e.g. "train/seed13/000012"
    split: str
    rows: tuple[int, ...]  # row indices in the split
    seed: int | None = None


def process_rank() -> tuple[int, int]:
    """(rank, world size) as `accelerate launch` / torchrun set them; (0, 1) for a plain run."""
    return launched_rank(), launched_processes()


def derived_seed(*parts) -> int:
    """A 63-bit seed from its parts (e.g. the user's seed, the split, the batch index): stable across runs."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def fingerprint(obj) -> str:
    """sha256 of a JSON-able object: recorded with a run to recognise its inputs on a relaunch."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def weights_fingerprint(model: str) -> str | None:
    """A local model's weights by their content: a model retrained into the same folder is another model, whose
    relaunch must not resume the old one's samples, and one retrained to the same bytes (CPU runs are bit-identical)
    is the same model. None for a Hub id, which its revision names."""
    if not os.path.isdir(model):
        return None
    names = sorted(name for name in os.listdir(model) if name.endswith((".safetensors", ".bin")))
    return fingerprint([[name, weight_file_digest(os.path.join(model, name))] for name in names])


SAMPLE_BYTES = 4096  # one read of a tensor's bytes
SAMPLES_PER_TENSOR = 16


def weight_file_digest(path: str) -> str:
    """sha256 of a weight file's content, cheaply for safetensors: its header (every tensor's name, dtype, shape
    and byte range) and SAMPLES_PER_TENSOR evenly spaced reads of each tensor's bytes (all of a small tensor), a few
    MB for a 7B model. Training moves nearly every weight of a tensor it changes, so a retrained model differs in
    the samples; a change confined to a few weights between them goes unseen. Other files (.bin) are read whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if not path.endswith(".safetensors"):
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
            return digest.hexdigest()
        size = os.fstat(f.fileno()).st_size
        header_size = int.from_bytes(f.read(8), "little")
        if size < 8 or header_size > size - 8:  # not a safetensors file: its loader will say so; digest it whole
            f.seek(0)
            digest.update(f.read())
            return digest.hexdigest()
        header = f.read(header_size)
        digest.update(size.to_bytes(8, "little") + header)
        try:
            tensors = json.loads(header)
        except (UnicodeDecodeError, json.JSONDecodeError):
            tensors = {}
        ranges = sorted(
            tuple(t["data_offsets"]) for name, t in tensors.items() if name != "__metadata__" and "data_offsets" in t
        )
        for start, end in ranges:
            length = end - start
            if length <= SAMPLE_BYTES * SAMPLES_PER_TENSOR:
                offsets = [start]
                read = length
            else:
                step = (length - SAMPLE_BYTES) / (SAMPLES_PER_TENSOR - 1)
                offsets = [start + round(i * step) for i in range(SAMPLES_PER_TENSOR)]
                read = SAMPLE_BYTES
            for offset in offsets:
                f.seek(8 + header_size + offset)
                digest.update(f.read(read))
    return digest.hexdigest()


def file_fingerprint(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl(path: str, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path: str, made_by: str | None = None) -> list[dict]:
    return [row for _, row in numbered_jsonl(path, made_by)]


def numbered_jsonl(path: str, made_by: str | None = None) -> list[tuple[int, dict]]:
    """(line number, row) per non-blank line. A line that is not JSON (a file cut mid-line) is an error naming the
    file and line, and the command that rewrites the file (`made_by`), when there is one."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                fix = (
                    f" Rerun {made_by} with the same config: it keeps its finished units and rewrites this file"
                    " from them."
                    if made_by
                    else ""
                )
                raise DataError(
                    f"{path} line {number} is not a whole JSON row ({err.msg}; was the file cut short?).{fix}"
                ) from err
    return rows


def previous_stage_sides(output_dir: str, stage: str, made_by: str, prog: str, main: bool) -> list[str]:
    """The sides ("train", "test") the previous stage (`made_by`) wrote into output_dir/<stage>; none is an error
    naming that stage, raised before this command (`prog`) takes the folder's lock, so a stage run too early writes
    nothing. A folder another run holds is refused as in use first (its lock file is there already: taking the
    lock, on the main process, writes no file)."""
    folder = os.path.join(output_dir, stage)
    sides = [side for side in ("train", "test") if os.path.exists(os.path.join(folder, f"{side}.jsonl"))]
    if not sides:
        if main and os.path.exists(os.path.join(output_dir, LOCK_FILE)):
            lock_folder(output_dir, prog)  # refused while another run holds it
        raise DataError(f"No {stage} in {folder}: run {made_by} with this config first.")
    return sides


def check_settings(folder: str, settings: dict) -> None:
    """The first run records what it was asked to do; a relaunch into the same folder must ask the same, or the
    resumed output would mix two runs."""
    path = os.path.join(folder, "settings.json")
    settings = json.loads(json.dumps(settings))  # as the file will read back (tuples become lists)
    if not os.path.exists(path):
        write_atomic(path, json.dumps(settings, indent=1, sort_keys=True))
        return
    with open(path) as f:
        recorded = json.load(f)
    changed = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
    if changed:
        key = changed[0]
        raise DataError(
            f"{folder} holds a run with other settings ({', '.join(changed)}; e.g. {key}: {recorded.get(key)!r:.100}"
            f" then, {settings.get(key)!r:.100} now). Relaunch with the same settings to resume, or use another"
            " output_dir (or delete this one) to start afresh."
        )


class UnitStore:
    def __init__(self, folder: str):
        self.folder = folder

    def path(self, unit: Unit) -> str:
        return os.path.join(self.folder, unit.name + ".json")

    def done(self, unit: Unit) -> bool:
        return os.path.exists(self.path(unit))

    def write(self, unit: Unit, records: list) -> None:
        write_atomic(self.path(unit), json.dumps({"process": process_rank()[0], "records": records}))

    def read(self, unit: Unit) -> list:
        with open(self.path(unit)) as f:
            return json.load(f)["records"]


def run_units(
    units: list[Unit],
    store: UnitStore,
    work: Callable[[Unit], list],
    desc: str,
    poll_s: float = 1.0,
    everyone_waits: bool = False,
) -> bool:
    """Do this process's share of `units` that are not done yet; True on the main process once every unit of every
    process is done (it waits for the others), False on the others, unless `everyone_waits` (a next step needs the
    results everywhere)."""
    rank, world = process_rank()
    mine = units[rank::world]
    todo = [unit for unit in mine if not store.done(unit)]
    if len(todo) < len(mine):
        logger.info("%s: resuming, %d of %d units already done", desc, len(mine) - len(todo), len(mine))
    with tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=f"{desc} (process {rank} of {world})",
        unit="batch",
        disable=rank != 0,
        dynamic_ncols=True,
    ) as bar:
        for unit in todo:
            store.write(unit, work(unit))
            bar.update()
    if rank != 0 and not everyone_waits:
        return False
    waiting = [unit for unit in units if not store.done(unit)]
    if waiting:
        logger.info("%s: waiting for the other processes (%d units left)", desc, len(waiting))
    while waiting:
        time.sleep(poll_s)
        waiting = [unit for unit in waiting if not store.done(unit)]
    return True
