"""Per-token log-probs through the LM head without the [N, V] logits. tiled_logps (dispatch.py) chooses the kernel:
the torch tiles (torch_tiles.py, the reference) or the Triton tiles (triton_tiles.py, CUDA); common.py holds what both
share. Nothing here imports another part of simpo."""

from simpo.kernels.dispatch import tiled_logps

__all__ = ["tiled_logps"]
