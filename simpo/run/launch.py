"""Refuse a launch that accelerate silently turns into something other than what was asked for, at start-up, before
any data or model is loaded.

Two such cases: an FSDP launch on CPU (`use_cpu: true`, or no CUDA) becomes plain DDP over gloo, because accelerate
only switches to FSDP on accelerator backends, so every process holds the full model and optimizer, exactly what
FSDP was chosen to avoid. And processes launched together on a machine without GPUs, when the training YAML does not
say use_cpu, each set up a run of their own: every one trains on all the data and they write the same output_dir.

Also refused, before parsing (which starts DeepSpeed): a DeepSpeed launch that would wait forever on a torch
extension build lock that an interrupted build left behind (check_build_locks).
"""

import glob
import os
import time

import torch
from accelerate.utils import DistributedType

from simpo.environment import env_flag, launched_processes
from simpo.errors import LaunchError, StaleBuildLock

NOT_FSDP = (
    "FSDP was requested ({how}) but accelerate set up {actual}, not FSDP: every process would train a full, "
    "unsharded copy of the model. {why}"
)
ON_CPU = (
    "accelerate only enables FSDP on GPUs (on CPU it falls back to DDP over gloo). To shard on CPU use DeepSpeed "
    "ZeRO-3 (accelerate_configs/deepspeed_zero3_cpu.yaml); for data parallelism on CPU say so with "
    "accelerate_configs/ddp_cpu.yaml."
)
ALONE = (
    "{n} processes were launched (WORLD_SIZE={n}) but accelerate set up {actual} in each: they would train "
    "separately, each on all the data, and overwrite each other's output_dir. {why}"
)
ALONE_ON_CPU = "There is no GPU: set use_cpu: true in the training YAML (or --use_cpu=true) so they join over gloo."
ALONE_ON_GPU = "Check that every process sees a GPU (CUDA_VISIBLE_DEVICES) and that use_cpu is not set."
NOT_LAUNCHED = "FSDP needs a distributed launch: `accelerate launch --config_file accelerate_configs/fsdp.yaml ...`."
# The process kinds accelerate turns into FSDP when asked (AcceleratorState: accelerator backends only).
BECOMES_FSDP = {
    DistributedType.FSDP,
    DistributedType.MULTI_GPU,
    DistributedType.MULTI_XPU,
    DistributedType.MULTI_NPU,
    DistributedType.MULTI_MLU,
    DistributedType.MULTI_SDAA,
    DistributedType.MULTI_MUSA,
    DistributedType.MULTI_HPU,
}


def fsdp_requested(args) -> str | None:
    """How FSDP was asked for, or None: `accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP, and the
    training arguments can ask for it with `fsdp`."""
    if env_flag("ACCELERATE_USE_FSDP"):
        return f"accelerate config, FSDP_VERSION={os.environ.get('FSDP_VERSION', '1')}"
    if getattr(args, "fsdp", None):
        return f"training argument fsdp={args.fsdp!r}"
    return None


def check_launch(args) -> None:
    """check_distributed_setup on the processes the training arguments set up (transformers' PartialState)."""
    _ = args.device  # sets up args.distributed_state
    check_distributed_setup(args.distributed_state, args)


def check_distributed_setup(state, args) -> None:
    """Raise LaunchError when the launch asked for processes or FSDP that accelerate will not set up. `state` is
    accelerate's PartialState (or AcceleratorState) of this process: distributed_type and num_processes."""
    kind = state.distributed_type
    on_cpu = args.use_cpu or env_flag("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    name = kind.value if isinstance(kind, DistributedType) else str(kind)
    actual = f"{name} on {'CPU' if on_cpu else 'GPU'} with {state.num_processes} process(es)"

    launched = launched_processes()
    if launched > 1 and state.num_processes == 1:
        why = ALONE_ON_GPU if torch.cuda.is_available() and not args.use_cpu else ALONE_ON_CPU
        raise LaunchError(ALONE.format(n=launched, actual=actual, why=why))

    how = fsdp_requested(args)
    if how is not None and kind not in BECOMES_FSDP:
        raise LaunchError(NOT_FSDP.format(how=how, actual=actual, why=ON_CPU if on_cpu else NOT_LAUNCHED))


STALE_BUILD_LOCK = (
    "A build lock is left over from an interrupted build of a torch extension (DeepSpeed builds its ops on first"
    " use): {paths}. No process holds it, and every DeepSpeed launch would wait on it forever without a word. Delete"
    " it and launch again: rm {rm}"
)


def deepspeed_requested(argv: list[str]) -> bool:
    """DeepSpeed is asked for by `accelerate launch` with a DeepSpeed config (ACCELERATE_USE_DEEPSPEED) or by the
    `deepspeed` key, on the command line or in the YAML (read as text: this runs before parsing, which would
    already start DeepSpeed)."""
    if env_flag("ACCELERATE_USE_DEEPSPEED") or any(arg.startswith("--deepspeed") for arg in argv):
        return True
    config = next((arg for arg in argv if arg.endswith((".yaml", ".yml"))), None)
    try:
        with open(config) as f:
            return any(
                line.startswith("deepspeed:") and line.split(":", 1)[1].strip() not in ("", "null") for line in f
            )
    except (OSError, TypeError):
        return False


def extension_build_locks() -> list[str]:
    """The `lock` files of torch extension builds: TORCH_EXTENSIONS_DIR/<name>/lock, or by default
    ~/.cache/torch_extensions/<python>_<accelerator>/<name>/lock (torch.utils.cpp_extension's build folders)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return sorted(glob.glob(os.path.join(root, "*", "lock")) + glob.glob(os.path.join(root, "*", "*", "lock")))


def open_files() -> set[tuple[int, int]]:
    """(device, inode) of every file a process on this machine has open (those whose /proc entries we may read)."""
    opened = set()
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                stat = os.stat(os.path.join(fd_dir, name))
            except OSError:
                continue
            opened.add((stat.st_dev, stat.st_ino))
    return opened


def unheld(paths: list[str]) -> dict[str, tuple[int, int]]:
    """The lock files among `paths` that no process has open: torch's FileBaton keeps its lock open while it builds
    and deletes it after, so a lock nobody holds was left by a build that died."""
    opened, found = open_files(), {}
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) not in opened:
            found[path] = (stat.st_dev, stat.st_ino)
    return found


def check_build_locks(argv: list[str], settle_s: float = 1.0) -> None:
    """Refuse a DeepSpeed launch that would wait forever on a stale extension build lock, before DeepSpeed starts.
    A lock seen unheld is looked at again after `settle_s` (a build that just ended closes its lock before it
    deletes it)."""
    if not deepspeed_requested(argv):
        return
    stale = unheld(extension_build_locks())
    if stale:
        time.sleep(settle_s)
        again = unheld(list(stale))
        stale = [path for path, key in stale.items() if again.get(path) == key]
    if stale:
        raise StaleBuildLock(STALE_BUILD_LOCK.format(paths=", ".join(stale), rm=" ".join(stale)))


def deepspeed_stage(args) -> int | None:
    """The ZeRO stage of a DeepSpeed run, None when DeepSpeed is not in use: `accelerate launch` with a DeepSpeed
    config says so in the environment (ACCELERATE_USE_DEEPSPEED, ACCELERATE_DEEPSPEED_ZERO_STAGE); the `deepspeed`
    training argument (a JSON file or dict) once the Trainer's arguments have read it (hf_deepspeed_config)."""
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    config = getattr(args, "hf_deepspeed_config", None)
    if stage is None and config is not None:
        stage = config.config.get("zero_optimization", {}).get("stage")
    if stage is not None and str(stage).strip() != "":
        return int(stage)
    if env_flag("ACCELERATE_USE_DEEPSPEED") or getattr(args, "deepspeed", None):
        return 0
    return None


def uses_deepspeed(args) -> bool:
    return deepspeed_stage(args) is not None


def uses_fsdp(args) -> bool:
    return fsdp_requested(args) is not None
