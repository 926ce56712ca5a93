"""activation_checkpointing: auto — checkpoint only when training without it would not fit the device.

Checkpointing recomputes every forward in the backward, about a fifth of a step; a model whose activations fit
beside its weights and optimizer state gains that time back. The estimate (per process, in bytes):

    weights + gradients + optimizer state (AdamW: two fp32 moments per trainable parameter, plus an fp32 master
    copy under DeepSpeed), each divided by the processes it is sharded over (ZeRO-1: the optimizer state; ZeRO-2:
    also the gradients; ZeRO-3 and FSDP: all three), plus activations: per token and layer about
    12 x hidden + 5 x intermediate values (the tensors a decoder block keeps for its backward: norms, q/k/v,
    attention output, gate/up/activation) in the activation dtype, times the largest batch a step can hold
    (per_device_train_batch_size x 2 sequences x max_length tokens), plus the head's logits on the plain path.

Without checkpointing it must fit within FREE_SHARE of the device's free memory (torch.cuda.mem_get_info, plus
what the model already holds there), leaving the rest to the allocator's fragmentation and the kernels' workspace.
Off CUDA, auto means off: there is no device memory to plan for and CPU runs are small.
"""

from dataclasses import dataclass

import torch

from simpo.models.modules import is_quantised
from simpo.run.launch import deepspeed_stage, uses_deepspeed, uses_fsdp

FREE_SHARE = 0.8
ADAM_BYTES = 8  # two fp32 moments
MASTER_BYTES = 4  # DeepSpeed keeps an fp32 copy of bf16/fp16 weights


@dataclass(frozen=True)
class CheckpointingChoice:
    enabled: bool
    reason: str  # one line for the start summary, with the numbers


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def sharding(args) -> tuple[int, int, int]:
    """How many processes share (weights, gradients, optimizer state): ZeRO's stage or FSDP, else 1 each."""
    world = max(int(getattr(args, "world_size", 1) or 1), 1)
    stage = deepspeed_stage(args)
    if uses_fsdp(args) or stage == 3:
        return world, world, world
    if stage == 2:
        return 1, world, world
    if stage == 1:
        return 1, 1, world
    return 1, 1, 1


def activation_bytes_per_token(config, args, dtype_bytes: int) -> int:
    """A decoder stack's saved activations per token without checkpointing, plus the head on the plain path."""
    text = getattr(config, "text_config", None) or config
    hidden = text.hidden_size
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    per_layer = (12 * hidden + 5 * intermediate) * dtype_bytes
    head = 0 if getattr(args, "fused_logps", False) else 3 * text.vocab_size * 4  # fp32 logits, log-softmax, grad
    return text.num_hidden_layers * per_layer + head


def _numel(p) -> int:
    return getattr(p, "ds_numel", None) or p.numel()  # a ZeRO-3 parameter's local numel() is 0


def training_bytes(model, args) -> dict[str, int]:
    """The estimate's parts, per process, without checkpointing."""
    w_shards, g_shards, o_shards = sharding(args)
    params = [p for p in model.parameters()]
    weights = sum(_numel(p) * p.element_size() for p in params)
    trainable = [p for p in params if p.requires_grad]
    grads = sum(_numel(p) * p.element_size() for p in trainable)
    optimizer = sum(_numel(p) for p in trainable) * ADAM_BYTES
    if uses_deepspeed(args):
        optimizer += sum(_numel(p) for p in trainable if p.element_size() < 4) * MASTER_BYTES
    half = args.bf16 or args.fp16 or any(p.element_size() == 2 for p in params[:1])
    tokens = args.per_device_train_batch_size * 2 * args.max_length
    return {
        "weights": weights // w_shards,
        "gradients": grads // g_shards,
        "optimizer": optimizer // o_shards,
        "activations": tokens * activation_bytes_per_token(model.config, args, 2 if half else 4),
        "tokens": tokens,
    }


def device_budget(model) -> tuple[int, int] | None:
    """(free bytes, total bytes) of this process's CUDA device, counting what the model already holds there as
    free (the estimate includes it); None without CUDA."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    held = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == "cuda")
    return free + held, total


def choose_checkpointing(model, args, budget: tuple[int, int] | None = None) -> CheckpointingChoice:
    """The choice for args.activation_checkpointing (True, False or "auto"), with its reason."""
    setting = args.activation_checkpointing
    if setting is True or setting is False:
        return CheckpointingChoice(setting, f"set: activation_checkpointing: {str(setting).lower()}")
    if budget is None:
        budget = device_budget(model)
    if budget is None:
        return CheckpointingChoice(False, "auto: no CUDA device (auto checkpoints only to fit GPU memory)")
    if is_quantised(model):
        return CheckpointingChoice(True, "auto: a quantised model (QLoRA trains where memory is short)")
    parts = training_bytes(model, args)
    need = parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["activations"]
    free, _ = budget
    fits = need <= FREE_SHARE * free
    detail = (
        f"needs about {_gib(need)} without it (weights {_gib(parts['weights'])}, gradients "
        f"{_gib(parts['gradients'])}, optimizer {_gib(parts['optimizer'])}, activations "
        f"{_gib(parts['activations'])} for {parts['tokens']:,} tokens) against {_gib(FREE_SHARE * free)} "
        f"({FREE_SHARE:.0%} of {_gib(free)} free)"
    )
    return CheckpointingChoice(not fits, f"auto: {detail}")
