"""The batch layout of a run: plain (simpo/train/layouts/plain.py) or prefix sharing, optionally padding-free, with
dense masks or FlexAttention block masks (simpo/train/layouts/shared_prefix.py). A layout is the trainer's data
collator; for the batches it collated it also builds the model's forward arguments (model_inputs) and counts their
tokens as the plain layout would run them (real_tokens). The batch a layout collates is a ScoringBatch
(simpo/train/layouts/batch.py); the settings' own checks are simpo/train/layouts/settings.py.

layout_options lists the layouts the settings and the model allow, best first; the start-up self-check
(simpo/train/self_check/) checks them on the run's device and keeps the first that agrees with the plain layout, or,
for the settings left at auto (padding_free, flex_attention), the fastest of those that agree. Without the check
(self_check: off), the run uses the first option.
"""

import logging
from dataclasses import dataclass

import torch

from simpo.errors import ConfigError
from simpo.models.modules import unwrap_model
from simpo.train.layouts.plain import PlainLayout
from simpo.train.layouts.shared_prefix import SharedPrefixLayout, prefix_sharing_problem

logger = logging.getLogger(__name__)
FLEX = "flex_attention"


@dataclass(frozen=True)
class LayoutChoice:
    """One way to lay out a batch: the plain layout, or prefix sharing (padding-free or not; with FlexAttention block
    masks or dense masks for the model's own kernel)."""

    prefix_sharing: bool = False
    padding_free: bool = False
    flex: bool = False

    @property
    def name(self) -> str:
        if not self.prefix_sharing:
            return "plain"
        packed = " + padding-free" if self.padding_free else ""
        return f"prefix sharing{packed} ({'FlexAttention block masks' if self.flex else 'dense masks'})"


PLAIN = LayoutChoice()


def layout_options(model: torch.nn.Module, args) -> list[list[LayoutChoice]]:
    """The layouts this run may use, in tiers, best first: the prefix-shared ones its settings allow, then the plain
    layout where prefix_sharing is auto. Within a tier, the options that agree are timed on a GPU (padding_free and
    flex_attention at auto); elsewhere the first that agrees is kept: without padding-free, and FlexAttention before
    dense masks.

    prefix_sharing true must be exact for this model or raise; auto turns it on exactly when it is. FlexAttention
    (flex_attention true, or auto on a GPU) works whatever kernel the model was loaded with (flash_attention_2 in
    the paper configs cannot take the dense mask); dense masks need eager or sdpa, and flex_attention true rules
    them out."""
    lm = unwrap_model(model)
    if args.prefix_sharing is False:
        return [[PLAIN]]
    own = lm.config._attn_implementation
    flex = uses_flex(args) or own == FLEX  # a model loaded with flex_attention keeps it
    flex_ok = flex and prefix_sharing_problem(lm.config, FLEX) is None
    dense_ok = args.flex_attention is not True and own != FLEX and prefix_sharing_problem(lm.config, own) is None
    packing = [False, True] if args.padding_free == "auto" else [bool(args.padding_free)]
    kernels = [True] * flex_ok + [False] * dense_ok
    shared = [LayoutChoice(True, packed, use_flex) for use_flex in kernels for packed in packing]
    if not shared:
        problem = prefix_sharing_problem(lm.config, FLEX if flex else own)
        if args.prefix_sharing == "auto" and args.padding_free is not True:
            logger.info("prefix_sharing=auto: using the plain layout. %s", problem)
            return [[PLAIN]]
        raise ConfigError(problem)
    return [shared] + ([[PLAIN]] if args.prefix_sharing == "auto" else [])


def build_layout(
    choice: LayoutChoice, model: torch.nn.Module, args, pad_token_id: int, dense_kernel: str
) -> PlainLayout | SharedPrefixLayout:
    """The layout `choice` names, with the model's attention set for it: flex_attention for FlexAttention block
    masks, else `dense_kernel` (the kernel the model was loaded with)."""
    lm = unwrap_model(model)
    kernel = FLEX if choice.flex else dense_kernel
    if lm.config._attn_implementation != kernel:
        logger.info("Attention switched from %s to %s (%s).", lm.config._attn_implementation, kernel, choice.name)
        lm.set_attn_implementation(kernel)
    if not choice.prefix_sharing:
        return PlainLayout(pad_token_id, args.label_pad_token_id)
    # The attention scores come out in the autocast dtype under mixed precision, else in the weights' dtype.
    scores_dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else lm.dtype
    return SharedPrefixLayout(
        pad_token_id,
        args.label_pad_token_id,
        padding_free=choice.padding_free,
        max_tokens_per_row=args.max_tokens_per_row if choice.padding_free else None,
        config=lm.config,
        mask_dtype=scores_dtype,
    )


def choose_layout(model: torch.nn.Module, args, pad_token_id: int) -> PlainLayout | SharedPrefixLayout:
    """The first of layout_options, built: the run's layout before (or without) the start-up self-check."""
    dense_kernel = unwrap_model(model).config._attn_implementation
    return build_layout(layout_options(model, args)[0][0], model, args, pad_token_id, dense_kernel)


class LayoutSlot:
    """The trainer's data collator: the run's layout, which the start-up self-check may replace before the first
    batch is collated (the dataloaders hold this object, not the layout). Everything else is the layout's, its class
    too (isinstance sees the layout's)."""

    def __init__(self, layout):
        self.layout = layout

    @property
    def __class__(self):
        return type(self.__dict__["layout"])

    def __reduce__(self):  # a slot again in a dataloader worker that is spawned, not its layout's class
        return LayoutSlot, (self.layout,)

    def __call__(self, features: list[dict]):
        return self.layout(features)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["layout"], name)


def uses_flex(args) -> bool:
    """flex_attention true, or auto on a GPU; refused on a CPU, where FlexAttention runs forward only."""
    on_gpu = args.device.type == "cuda"
    if args.flex_attention is True and not on_gpu:
        raise ConfigError(
            "flex_attention: true needs a GPU: FlexAttention has no backward on CPU. Use"
            " flex_attention: auto (dense masks with eager/sdpa on CPU)."
        )
    return args.flex_attention is True or (args.flex_attention == "auto" and on_gpu)
