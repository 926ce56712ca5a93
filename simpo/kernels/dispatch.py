"""The one place a log-prob kernel is chosen: tiled_logps runs the Triton tiles (simpo/kernels/triton_tiles.py) on
CUDA tensors when triton is importable, else the torch tiles (simpo/kernels/torch_tiles.py, the reference). Both
compute, without holding the [N, V] logits,

    logits = (hidden @ weight.T + bias) transformed (scale, softcap); logps = logits.log_softmax(-1).gather(-1, y)

(simpo/kernels/torch_tiles.py states the formulas and the backward).
"""

import importlib.util
import os

from simpo.errors import ConfigError
from simpo.kernels.common import DEFAULT_TILES, operand_dtype
from simpo.kernels.ledger import KernelLedger
from simpo.kernels.torch_tiles import TiledLogProbs

KERNELS = ("auto", "triton", "torch")


def kernel_setting(kernel: str | None = None) -> str:
    """The kernel asked for: `kernel`, else SIMPO_LOGPS_KERNEL, else "auto"; refused unless one of KERNELS."""
    kernel = kernel or os.environ.get("SIMPO_LOGPS_KERNEL") or "auto"
    if kernel not in KERNELS:
        raise ConfigError(
            f"tiled_logps: kernel (or SIMPO_LOGPS_KERNEL) is {kernel!r}; use 'auto', 'triton' or 'torch'."
        )
    return kernel


def auto_kernel(device) -> str:
    """What auto runs on `device` (a torch.device): Triton for CUDA when triton is importable, else torch."""
    return "triton" if device.type == "cuda" and importlib.util.find_spec("triton") else "torch"


def tiled_logps(
    hidden,
    weight,
    bias,
    labels,
    scale=1.0,
    softcap=None,
    compute_dtype=None,
    token_tile=None,
    vocab_tile=None,
    kernel=None,
    ledger: KernelLedger | None = None,
):
    """log p(label) [N] fp32 and mean logit [N] (detached) for hidden [N, H] through a head weight [V, H] (+ bias).

    compute_dtype is the dtype the model's head computes in (its output's dtype: bf16 under bf16 autocast even for
    fp32 weights); None takes the weight's.
    kernel: "triton" (simpo/kernels/triton_tiles.py), "torch" (TiledLogProbs, the reference) or "auto": Triton for CUDA
    tensors when triton is importable, else torch. None reads the environment variable SIMPO_LOGPS_KERNEL (default
    "auto").
    ledger: the run's KernelLedger, which counts the call and remembers the Triton path's tile choice.
    """
    kernel = kernel_setting(kernel)
    if kernel == "auto":
        kernel = auto_kernel(hidden.device)
    dtype = operand_dtype(compute_dtype or weight.dtype)
    ledger = ledger if ledger is not None else KernelLedger()
    ledger.calls[kernel] += 1
    if kernel == "triton":
        from simpo.kernels.triton_tiles import triton_logps  # imports triton: only when asked for

        return triton_logps(hidden, weight, bias, labels, scale, softcap, dtype, token_tile, vocab_tile, ledger)
    tiles = DEFAULT_TILES.get(hidden.device.type, DEFAULT_TILES["cuda"])
    token_tile, vocab_tile = token_tile or tiles[0], vocab_tile or tiles[1]
    return TiledLogProbs.apply(hidden, weight, bias, labels, float(scale), softcap, dtype, token_tile, vocab_tile)
