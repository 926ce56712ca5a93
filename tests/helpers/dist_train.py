"""Test launcher: the SimPO recipe (simpo.train.recipe.train_main), or with `sft` before the YAML the SFT recipe
(simpo.sft.recipe.sft_main), plus a probe that records what each rank really ran.

    accelerate launch --config_file CONFIG tests/helpers/dist_train.py PROBE_DIR [sft] TRAINING.yaml [--key=value ...]

At train end every rank writes PROBE_DIR/rank<N>.json (rank, world size, backend, the wrapper type of the model,
its full parameters' sum, its training batches per epoch, under ZeRO-3 the size of its local shard, and the pairs
(tokenised chosen + rejected, hashed) it trained on in each optimizer step) and
PROBE_DIR/rank<N>.safetensors (the full parameters, gathered under ZeRO-3), so tests/train/test_distributed.py can check
from outside that the run was distributed the way the accelerate config said.
"""

import collections
import gc
import hashlib
import json
import os
import signal
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import TrainerCallback

from simpo.run.commands import exit_process
from simpo.sft.recipe import sft_main
from simpo.train.recipe import train_main
from simpo.train.trainer import SimPOTrainer

# The pairs each SimPO micro-batch holds, in the order they were collated (a FIFO: accelerate's loader fetches a batch
# ahead, and the Trainer fetches a step's micro-batches before running them), and those of the current optimizer step.
COLLATED: collections.deque = collections.deque()
THIS_STEP: list[str] = []


def pair_id(feature: dict) -> str:
    """A pair's identity: its tokenised chosen and rejected sequences."""
    text = json.dumps([list(feature["chosen_input_ids"]), list(feature["rejected_input_ids"])])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class LoggedCollator:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, features):
        COLLATED.append([pair_id(f) for f in features])
        return self.collate(features)


def log_pairs(trainer_cls) -> None:
    """Patch the trainer so each training micro-batch's pairs land in THIS_STEP (DistProbe files them per step)."""
    get_train_dataloader, compute_loss = trainer_cls.get_train_dataloader, trainer_cls.compute_loss

    def logged_dataloader(self):
        if not isinstance(self.data_collator, LoggedCollator):
            self.data_collator = LoggedCollator(self.data_collator)
        return get_train_dataloader(self)

    def logged_loss(self, model, inputs, *args, **kwargs):
        THIS_STEP.extend(COLLATED.popleft())
        return compute_loss(self, model, inputs, *args, **kwargs)

    trainer_cls.get_train_dataloader, trainer_cls.compute_loss = logged_dataloader, logged_loss


def outermost_wrapper(model: torch.nn.Module) -> torch.nn.Module:
    """Trainer hands callbacks the bare model; the DDP module or DeepSpeed engine around it (trainer.model_wrapped)
    is the module whose `.module` is that model."""
    for obj in gc.get_objects():  # type(), not isinstance(): the latter wakes lazy modules that warn
        if issubclass(type(obj), torch.nn.Module) and obj is not model and getattr(obj, "module", None) is model:
            return outermost_wrapper(obj)
    return model


def full_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter in full; under ZeRO-3 each rank holds a shard, so gather them (a no-op otherwise)."""
    params = dict(model.named_parameters())
    if not any(hasattr(p, "ds_id") for p in params.values()):
        return {name: p.detach().clone() for name, p in params.items()}
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        return {name: p.detach().clone() for name, p in params.items()}


def zero3_shard(model: torch.nn.Module) -> dict | None:
    """Local vs full size of the largest parameter: under ZeRO-3 a rank stores about 1/world_size of it."""
    sharded = [p for p in model.parameters() if hasattr(p, "ds_tensor")]
    if not sharded:
        return None
    largest = max(sharded, key=lambda p: p.ds_numel)
    return {"local_numel": largest.ds_tensor.numel(), "full_numel": largest.ds_numel, "shape": list(largest.ds_shape)}


class DistProbe(TrainerCallback):
    """stop_at: the step this launch stops at as a SIGTERM would stop it (checkpoint, exit 143), a preemption."""

    def __init__(self, out_dir: str, stop_at: int | None = None, stop_rank: int | None = None):
        self.out_dir = out_dir
        self.stop_at = stop_at
        self.stop_rank = stop_rank  # only this rank receives the signal (None: every rank, as torchrun forwards it)
        self.pairs = {}  # optimizer step -> the pairs this rank trained on in it

    def on_step_begin(self, args, state, control, **kwargs):
        rank = dist.get_rank() if dist.is_initialized() else 0
        if self.stop_at is not None and state.global_step + 1 == self.stop_at and self.stop_rank in (None, rank):
            os.kill(os.getpid(), signal.SIGTERM)  # StopOnSignal saves and stops at the end of this step

    def on_step_end(self, args, state, control, **kwargs):
        self.pairs[state.global_step] = sorted(THIS_STEP)
        THIS_STEP.clear()

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        wrapped = outermost_wrapper(model)
        params = full_parameters(model)
        rank = dist.get_rank() if dist.is_initialized() else 0
        record = {
            "rank": rank,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "wrapped_type": f"{type(wrapped).__module__}.{type(wrapped).__name__}",
            "param_sum": float(sum(p.double().sum() for p in params.values())),
            "num_params": sum(p.numel() for p in params.values()),
            "batches_per_epoch": len(train_dataloader) if train_dataloader is not None else None,
            "global_step": state.global_step,
            "zero3_shard": zero3_shard(model),
            "pairs": self.pairs,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        }
        os.makedirs(self.out_dir, exist_ok=True)
        save_file(params, os.path.join(self.out_dir, f"rank{rank}.safetensors"))
        with open(os.path.join(self.out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":  # as scripts/run_simpo.py and run_sft.py do: the recipe, then exit_process
    stop_at = int(os.environ["PROBE_STOP_AT_STEP"]) if os.environ.get("PROBE_STOP_AT_STEP") else None
    stop_rank = int(os.environ["PROBE_STOP_RANK"]) if os.environ.get("PROBE_STOP_RANK") else None
    probe = DistProbe(sys.argv[1], stop_at, stop_rank)
    if sys.argv[2] == "sft":
        exit_process(sft_main(sys.argv[3:], callbacks=[probe]))
    else:
        log_pairs(SimPOTrainer)
        exit_process(train_main(sys.argv[2:], callbacks=[probe]))
