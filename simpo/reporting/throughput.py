"""Real tokens trained on per second: the tokens the model ran on (as the plain layout runs them, so that layouts
compare), per second of training with evaluation time left out."""

import time

import torch


class TokenThroughput:
    """Real tokens trained on per second. add() a micro-batch's count (a tensor: no sync); window() and total()
    reduce over processes, so every process must call them at the same points (Trainer.log runs on all of them)."""

    def __init__(self):
        self.pending = None  # tokens since the last window, this process, a tensor on the device
        self.window_start = None
        self.eval_seconds = 0.0
        self.total_tokens = 0
        self.total_seconds = 0.0

    def add(self, tokens: torch.Tensor) -> None:
        if self.window_start is None:
            self.window_start = time.perf_counter()
        self.pending = tokens if self.pending is None else self.pending + tokens

    def exclude(self, seconds: float) -> None:
        """Evaluation time inside the current window (from eval_runtime)."""
        if self.window_start is not None:
            self.eval_seconds += seconds

    def window(self, accelerator) -> dict:
        """tokens/per_second over the micro-batches since the last call; empty when there were none."""
        if self.pending is None:
            return {}
        tokens = int(accelerator.reduce(self.pending.detach().to(torch.int64), reduction="sum").item())
        now = time.perf_counter()
        seconds = max(now - self.window_start - self.eval_seconds, 1e-9)
        self.total_tokens += tokens
        self.total_seconds += seconds
        self.pending, self.window_start, self.eval_seconds = None, now, 0.0
        return {"tokens/per_second": tokens / seconds}

    def total(self, accelerator) -> dict:
        """Run totals for the end-of-training metrics (train_results.json)."""
        self.window(accelerator)
        if not self.total_tokens:
            return {}
        return {
            "train_num_tokens": self.total_tokens,
            "train_tokens_per_second": round(self.total_tokens / self.total_seconds, 3),
        }
