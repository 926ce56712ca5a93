"""A dispatch mode that finds where simpo's own code makes the host wait for the device."""

import os
import traceback

import torch
from conftest import REPO
from torch.utils._python_dispatch import TorchDispatchMode

# Operations that make the host wait for the device: reading a value (.item(), .tolist(), bool()), or ops whose
# output size depends on values (nonzero, boolean indexing, bincount without a known size).
SYNCING = {
    "aten._local_scalar_dense.default",
    "aten.nonzero.default",
    "aten.bincount.default",
    "aten.masked_select.default",
    "aten.index.Tensor_bool",
}
SIMPO = os.path.join(REPO, "simpo")


def library_frame(filename: str) -> bool:
    """simpo's or another library's frame; torch's own are skipped (the dispatch machinery sits innermost)."""
    return filename.startswith(SIMPO) or ("site-packages" in filename and "site-packages/torch/" not in filename)


class SimpoHostReads(TorchDispatchMode):
    """Records syncing ops whose innermost library frame is simpo's own code (not transformers' or peft's)."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNCING or (
            str(func) == "aten.index.Tensor"
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))
        ):
            frames = [f for f in traceback.extract_stack() if library_frame(f.filename)]
            # FiniteLossGuard.check reads the previous micro-batch's verdict: on a GPU a pinned host copy whose
            # event has passed, so no wait; here, on a CPU, the same read of a host tensor.
            guard_read = frames and frames[-1].name == "check" and frames[-1].filename.endswith("metrics.py")
            if frames and frames[-1].filename.startswith(SIMPO) and not guard_read:
                self.reads.append(f"{func} at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}")
        return func(*args, **(kwargs or {}))
