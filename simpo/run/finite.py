"""No NaN reaches the weights or a checkpoint: FiniteUpdates stops training before an optimizer step whose gradients
are not finite is applied, and before weights that are not finite are saved. Both recipes use it (the SimPO trainer
adds it itself; the SFT recipe passes it to TRL's SFTTrainer).

One check per optimizer step, not per micro-batch: the step's own work stays free of host syncs. The Trainer has
already clipped the gradients by their global norm when on_pre_optimizer_step runs, and a non-finite norm turns every
gradient on every process into NaN (the clip coefficient is NaN), so each process sees the same verdict locally.
"""

import logging

import torch
from torch import nn
from transformers import TrainerCallback

from simpo.errors import NonFiniteError
from simpo.run.checkpoints import resume_advice

logger = logging.getLogger(__name__)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly sharded) tensor: a DTensor's local shard, DeepSpeed ZeRO-3's partition."""
    if hasattr(tensor, "to_local"):
        return tensor.to_local()
    return getattr(tensor, "ds_tensor", tensor)


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every value of `tensors` is finite: one fused norm per device and dtype, one host read."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors, norm_type=float("inf"))).item())


def gradients_finite(model: nn.Module) -> bool:
    return all_finite([local(p.grad) for p in model.parameters() if p.grad is not None])


def weights_finite(model: nn.Module, device=None) -> bool:
    """Every weight on every process: each holds only its shard under FSDP or ZeRO-3, so the verdicts are combined
    (every process must call this)."""
    finite = all_finite([local(p).detach() for p in model.parameters()])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor(float(finite), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = bool(flag.item())
    return finite


def non_finite_weights(model: nn.Module) -> list[str]:
    """The names of the weights that hold a NaN or infinity (this process's part), for the error message."""
    return [name for name, p in model.named_parameters() if not all_finite([local(p).detach()])]


def refuse_non_finite_weights(model: nn.Module, output_dir: str, what: str, device=None) -> None:
    """Raise NonFiniteError before `what` is written if any weight is not finite."""
    if weights_finite(model, device):
        return
    names = non_finite_weights(model)
    raise NonFiniteError(
        f"Not saving {what}: {len(names) or 'some'} weight tensors hold NaN or infinite values"
        f"{' (' + ', '.join(names[:3]) + (', ...' if len(names) > 3 else '') + ')' if names else ''}. Lower the"
        f" learning rate or check the data; {resume_advice(output_dir)}."
    )


class FiniteUpdates(TrainerCallback):
    """Stop before a non-finite gradient is applied (on_pre_optimizer_step) and before non-finite weights are saved
    (a step or epoch end that will save). `before_update` runs first at each optimizer step (the SimPO trainer's
    loss check, whose message says more)."""

    def __init__(self, before_update=None):
        self.before_update = before_update

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.before_update is not None:
            self.before_update()
        # fp16 loss scaling expects overflowing steps: the scaler skips them itself.
        if args.fp16 or model is None or gradients_finite(model):
            return
        raise NonFiniteError(
            f"Non-finite gradient norm at step {state.global_step + 1}: stopped before its optimizer update, so no"
            f" weight changed and nothing was saved. Lower the learning rate (or max_grad_norm) or check the data;"
            f" {resume_advice(args.output_dir)}."
        )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._before_save(args, state, control, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._before_save(args, state, control, model)

    def _before_save(self, args, state, control, model) -> None:
        if control.should_save and model is not None:
            refuse_non_finite_weights(model, args.output_dir, f"checkpoint-{state.global_step}", args.device)
