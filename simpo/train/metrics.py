"""What the trainer keeps between logs, without waiting for the GPU at every step.

PairWeightedMeans sums each metric over pairs on the device and reduces over processes only when a log asks for it.
FiniteLossGuard stops the run on a NaN or infinite loss: the verdict on a micro-batch is copied to the host
asynchronously and read when the next micro-batch starts, before the optimizer update (simpo/run/finite.py) or at
the next log, by when it is long computed; so no micro-step stalls on it, and a non-finite loss stops training before
an optimizer step can use it.
"""

import torch

from simpo.errors import NonFiniteError


class PairWeightedMeans:
    """Each metric's batch mean times the batch's pairs, summed on the device; pop() reduces over processes and
    divides by all pairs, so a short last batch counts for its pairs, not as much as a full one."""

    def __init__(self):
        self.names, self.sums = None, None

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        pairs = metrics["rewards/chosen"].numel()
        values = torch.stack([metric.float().mean() * pairs for metric in metrics.values()])
        values = torch.cat([values, values.new_full((1,), pairs)])
        if self.sums is None:
            self.names, self.sums = list(metrics), values
        else:
            self.sums += values

    def pop(self, accelerator) -> dict[str, float]:
        """{name: mean over every pair since the last pop, on all processes}; every process must call it."""
        if self.sums is None:
            return {}
        *sums, pairs = accelerator.reduce(self.sums, reduction="sum").tolist()
        means = {name: value / pairs for name, value in zip(self.names, sums)}
        self.names, self.sums = None, None
        return means


class FiniteLossGuard:
    def __init__(self):
        self.pending = None

    def watch(self, loss: torch.Tensor, describe) -> None:
        """Check the previous micro-batch, then start checking this one's loss; describe() builds the error's
        details (it runs only if the loss is not finite, and may then read tensors)."""
        self.check()
        finite, done = torch.isfinite(loss.detach()), None
        if finite.device.type == "cuda":  # into pinned host memory, read once the event has passed
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            finite, done = host.copy_(finite, non_blocking=True), torch.cuda.Event()
            done.record()
        self.pending = (finite, done, describe)

    def check(self) -> None:
        """Raise NonFiniteError (a FloatingPointError) if the watched loss was not finite."""
        if self.pending is None:
            return
        finite, done, describe = self.pending
        self.pending = None
        if done is not None:
            done.synchronize()
        if not finite.item():
            raise NonFiniteError(describe())
