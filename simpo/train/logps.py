"""Per-token log-probs of a batch's scored response tokens: the model runs on a layout's forward arguments (`inputs`,
simpo/train/layouts/__init__.py) and score_index / score_labels say which positions predict which response token
(simpo/train/layouts/plain.py).

plain_token_logps reads them off the model's full logits: simple, and the reference every faster path is tested
against. fused_token_logps runs the LM head tile by tile on the final hidden states (simpo/kernels) and never
holds the [tokens, vocabulary] logits. Both call the model as the Trainer holds it, so that the wrappers' hooks fire
(DDP, DeepSpeed ZeRO-3, FSDP2, PEFT, accelerate's autocast); both return (log p(label) [N] fp32, mean logit over the
vocabulary [N], detached).
"""

import functools
import inspect
import logging
from dataclasses import dataclass

import torch

from simpo.errors import UnsupportedModel
from simpo.kernels import tiled_logps
from simpo.kernels.common import no_autocast, operand_dtype, tile_logits
from simpo.kernels.dispatch import auto_kernel, kernel_setting
from simpo.kernels.ledger import KernelLedger
from simpo.models.modules import unwrap_model

logger = logging.getLogger(__name__)


def plain_token_logps(model, inputs: dict, score_index, score_labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model on the rows; return (log p(label), mean logit over the vocabulary) per scored token."""
    selected = model(**inputs).logits.flatten(0, 1)[score_index].float()
    return logps_from_logits(selected, score_labels), selected.detach().mean(-1)


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[label] for logits [N, V] and labels [N]."""
    return logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)


def fused_token_logps(
    model,
    inputs: dict,
    score_index,
    score_labels,
    token_tile=None,
    vocab_tile=None,
    ledger: KernelLedger | None = None,
    kernel: str | None = None,
):
    """Same contract as plain_token_logps, without the full logits.

    The forward runs through `model` with logits for the last position only; a probe keeps the decoder's final
    hidden states and what the head saw and returned there: the dtype it computed in (bf16 under autocast, whatever
    the weights' dtype) is the dtype the tiles compute in, and its logits check that the tiles reproduce the head
    (once per head and compute dtype: the check reads a result on the host, which would stall every step). `ledger`,
    the run's KernelLedger, remembers the heads checked and the kernels' choices; without one, every call checks.
    `kernel`: the tiles' kernel (tiled_logps': "triton", "torch", or None for SIMPO_LOGPS_KERNEL / auto).
    """
    ledger = ledger if ledger is not None else KernelLedger()
    lm = unwrap_model(model)
    head = head_module(lm)
    if fsdp1_flat(head.weight):
        _info_once("fused_logps: the LM head is a flat FSDP1 shard, which this path cannot use; using plain logps.")
        return plain_token_logps(model, inputs, score_index, score_labels)
    if "logits_to_keep" in inspect.signature(lm.forward).parameters:
        inputs = {**inputs, "logits_to_keep": 1}
    with ForwardProbe(lm.get_decoder(), head) as seen:
        outputs = model(**inputs)
    scale, softcap = head_transform(lm.config)
    compute_dtype = seen.head_output.dtype

    def head_logps(scored: torch.Tensor):
        # Runs as the head's forward (call_as_forward): its weight is whole here, gathered by ZeRO-3's hooks.
        weight, bias = head.weight, getattr(head, "bias", None)
        checked = ledger.heads_checked.setdefault(head, set())
        if compute_dtype not in checked:
            check_head(outputs.logits[:, -1], seen.head_input[:, -1], weight, bias, scale, softcap, compute_dtype)
            checked.add(compute_dtype)
        return tiled_logps(
            scored,
            weight,
            bias,
            score_labels,
            scale,
            softcap,
            compute_dtype,
            token_tile,
            vocab_tile,
            kernel=kernel,
            ledger=ledger,
        )

    unshard_fsdp2_head(lm, head)
    return call_as_forward(head, seen.hidden.flatten(0, 1)[score_index], head_logps)


# The log-prob paths by name (the start-up self-check's options, simpo/train/self_check/): the full logits, or the
# fused path with one of the tiles' kernels.
FULL_LOGITS = "full logits"
KERNEL_PATHS = {"triton": "triton tiles", "torch": "torch tiles"}


def token_logps_function(name: str, ledger: KernelLedger):
    """The function computing the log-probs on the path `name` (FULL_LOGITS or a KERNEL_PATHS value)."""
    if name == FULL_LOGITS:
        return plain_token_logps
    kernel = next(kernel for kernel, path in KERNEL_PATHS.items() if path == name)
    return functools.partial(fused_token_logps, ledger=ledger, kernel=kernel)


def logps_options(args) -> list[list[str]]:
    """The log-prob paths a run may use, best first, one per tier: with fused_logps, the kernel SIMPO_LOGPS_KERNEL
    names or, at auto, Triton (CUDA, triton importable) then torch; then the full logits, always."""
    if not args.fused_logps:
        return [[FULL_LOGITS]]
    kernel = kernel_setting()
    kernels = ["triton", "torch"] if kernel == "auto" and auto_kernel(args.device) == "triton" else []
    kernels = kernels or ["torch" if kernel == "auto" else kernel]
    return [[KERNEL_PATHS[k]] for k in kernels] + [[FULL_LOGITS]]


@dataclass
class ForwardProbe:
    """While open, records the decoder's output hidden states and the head's input and output in the model's
    forward. Hooks, so that they see what the model computed inside whatever wraps its forward."""

    decoder: torch.nn.Module
    head: torch.nn.Module
    hidden: torch.Tensor | None = None
    head_input: torch.Tensor | None = None
    head_output: torch.Tensor | None = None

    def __enter__(self):
        def on_decoder(module, args, output):
            self.hidden = output[0]

        def on_head(module, args, output):
            self.head_input, self.head_output = args[0], output

        self.handles = [self.decoder.register_forward_hook(on_decoder), self.head.register_forward_hook(on_head)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def call_as_forward(module: torch.nn.Module, x: torch.Tensor, compute):
    """module(x), with compute(x) in place of the module's own forward, which runs on an empty batch instead.

    Everything else about the call stays: forward hooks and instance-level forwards that other libraries set (ZeRO-3
    gathers the weight before, releases it after and registers its backward gathers on the outputs; accelerate's
    hooks wrap module.forward), so this composes with them. Ours are the last pre-hook and the first forward hook.
    """
    pending = []

    def swap_input(mod, args):
        pending.append(args[0])  # as the hooks before ours left it (ZeRO-3 wraps it for its backward release)
        return (args[0][:0],) + tuple(args[1:])

    def swap_output(mod, args, output):
        return compute(pending.pop())

    handles = [module.register_forward_pre_hook(swap_input), module.register_forward_hook(swap_output, prepend=True)]
    try:
        return module(x)
    finally:
        for handle in handles:
            handle.remove()


def fsdp1_flat(weight: torch.Tensor) -> bool:
    """FSDP1 flattens parameters into 1-D views of a shard; ZeRO-3's empty placeholders carry ds_id."""
    return weight.dim() != 2 and not hasattr(weight, "ds_id")


def unshard_fsdp2_head(lm: torch.nn.Module, head: torch.nn.Module) -> None:
    """Under FSDP2 the head's weight is a DTensor shard outside the forward of the FSDP module that owns it (the root,
    with accelerate's config). Unsharding that module makes it the whole parameter again until FSDP's post-backward
    reshards it, which also reduce-scatters its gradient as for any FSDP gradient. A no-op for everything else."""
    if hasattr(head.weight, "full_tensor"):
        fsdp_owner(lm, head).unshard()


def fsdp_owner(lm: torch.nn.Module, head: torch.nn.Module) -> torch.nn.Module:
    """The innermost FSDP2 module (fully_shard) that holds the head among its modules."""
    from torch.distributed.fsdp import FSDPModule

    path = next(name for name, module in lm.named_modules() if module is head).split(".")
    for depth in range(len(path), -1, -1):
        module = lm.get_submodule(".".join(path[:depth]))
        if isinstance(module, FSDPModule):
            return module
    raise RuntimeError("fused_logps: the LM head's weight is a DTensor but no FSDP2 module owns the head.")


def head_transform(config) -> tuple[float, float | None]:
    """(scale, softcap) that the transformers 5.24 CausalLM of this config applies to h W^T + b. check_head catches
    a transform missing here."""
    config = config.get_text_config()
    scale = getattr(config, "logit_scale", None) or 1.0  # Cohere, Cohere2: logits * logit_scale
    if getattr(config, "logits_scaling", None):  # Granite*: logits / s; MiniCPM3: hidden / s; HyperCLOVA X: logits * s
        s = config.logits_scaling
        scale *= s if config.model_type.startswith("hyperclovax") else 1 / s
    scale *= getattr(config, "lm_head_multiplier", None) or 1.0  # Falcon-H1
    scale *= getattr(config, "output_multiplier", None) or 1.0  # MuseSpark, MuseGlimmer (before their softcap)
    softcap = getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_soft_cap", None)
    return float(scale), softcap


def head_module(lm) -> torch.nn.Module:
    """The module owning the LM head's weight [V, H] (and bias), under PEFT's wrappers; refuses an adapted head."""
    head = lm.get_output_embeddings()
    if hasattr(head, "modules_to_save"):  # PEFT's ModulesToSaveWrapper: a trainable copy per adapter
        active = [a for a in head.active_adapters if a in head.modules_to_save]
        head = head.original_module if head.disable_adapters or not active else head.modules_to_save[active[0]]
    if hasattr(head, "get_base_layer"):  # a PEFT tuner layer (LoRA, ...) on the head itself
        unmerged = set(head.active_adapters) - set(head.merged_adapters)
        if unmerged and not head.disable_adapters:
            raise UnsupportedModel(
                f"fused_logps: the LM head carries the adapter(s) {sorted(unmerged)}, whose delta this path would "
                "ignore. Leave the head out of the adapter's target modules, or set fused_logps=False."
            )
        head = head.get_base_layer()
    if not head.weight.dtype.is_floating_point:
        raise UnsupportedModel(f"fused_logps: a quantised LM head ({head.weight.dtype}) is not supported.")
    return head


@functools.cache
def _info_once(message: str) -> None:
    logger.info(message)


# Unit roundoff (half the gap between 1 and the next number) of the head's compute dtype. fp32 matmuls may run in
# TF32 ("high") or bf16 ("medium") by torch.set_float32_matmul_precision, on CUDA and in oneDNN.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
FP32_MATMUL_ROUNDOFF = {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}
FP32_ROUNDOFF = 2.0**-24


def unit_roundoff(dtype: torch.dtype) -> float:
    return UNIT_ROUNDOFF.get(dtype) or FP32_MATMUL_ROUNDOFF[torch.get_float32_matmul_precision()]


@torch.no_grad()
def check_head(model_logits, hidden, weight, bias, scale, softcap, compute_dtype) -> None:
    """The model's own logits at the last position must be ours there, up to rounding. Else its head does something
    this path does not reproduce (a transform missing from head_transform, say): training on it would be wrong.

    The tolerance is a rounding-error bound for the dtype the head computed in (unit roundoff r) and the size of the
    values. Two computations of z = transform(h . w + b) over K = H terms, with fp32 sums (unit roundoff r32) but other
    kernels and blockings, differ by at most about
        r * |z|                                    the model rounding its logits to the compute dtype
        + r * |scale| * (|h| |w| + |b|)            partial sums rounded to it (cuBLAS's reduced-precision split-K)
        + sqrt(K) * r32 * |scale| * (|h| |w| + |b|)  fp32 summation in another order
    where |h| |w| >= sum_k |h_k w_k| (Cauchy-Schwarz) and the softcap's slope is at most 1. Twice that is allowed.
    """
    with no_autocast(hidden):
        ours = tile_logits(hidden, weight, bias, scale, softcap, operand_dtype(compute_dtype))
    theirs = model_logits.float()
    product_size = hidden.float().norm(dim=-1)[:, None] * weight.norm(dim=-1).float()[None, :]
    if bias is not None:
        product_size += bias.float().abs()
    roundoff = unit_roundoff(compute_dtype)
    tolerance = 2 * (
        roundoff * theirs.abs() + (roundoff + hidden.shape[-1] ** 0.5 * FP32_ROUNDOFF) * abs(scale) * product_size
    )
    excess = (ours - theirs).abs() / tolerance
    if excess.max() > 1:
        worst = excess.argmax()
        error, allowed = (ours - theirs).abs().flatten()[worst], tolerance.flatten()[worst]
        raise UnsupportedModel(
            f"fused_logps: the model's logits differ by {error:.3g} (allowed {allowed:.3g} in "
            f"{str(compute_dtype).replace('torch.', '')}) from {scale} * (hidden @ lm_head.weight.T + bias) with "
            f"softcap {softcap}: its head does something this path does not know. Set fused_logps=False."
        )
