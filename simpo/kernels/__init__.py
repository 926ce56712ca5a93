"""Per-token log-probs through the LM head without the [N, V] logits. tiled_logps (dispatch.py) chooses the kernel:
the torch tiles (torch_tiles.py, the reference) or the Triton tiles (triton_tiles.py, CUDA); common.py holds what both
share; ledger.py is what a run's kernels ran and chose; tile_cache.py keeps the Triton tile choice on disk. Nothing
here imports another part of simpo but simpo/errors.py and simpo/environment.py.

What changes here: how the log-probs are computed, never what they are (each kernel equals the naive
log_softmax(hidden @ W.T).gather, its docstring says how)."""

from simpo.kernels.dispatch import tiled_logps

__all__ = ["tiled_logps"]
