"""The batch layout of a run, chosen once from the config and the model: plain (simpo/train/layouts/plain.py) or prefix
sharing, optionally padding-free (simpo/train/layouts/shared_prefix.py). A layout is the trainer's data collator; for
the batches it collated it also builds the model's forward arguments (model_inputs) and counts their tokens as the plain
layout would run them (real_tokens). The batch a layout collates is a ScoringBatch (simpo/train/layouts/batch.py); the
settings' own checks are simpo/train/layouts/settings.py."""

import logging

import torch

from simpo.errors import ConfigError
from simpo.models.modules import unwrap_model
from simpo.train.layouts.plain import PlainLayout
from simpo.train.layouts.shared_prefix import SharedPrefixLayout, prefix_sharing_problem

logger = logging.getLogger(__name__)
# padding_free: auto on CUDA. The one place the default is decided: padding-free packing should beat one padded row
# per pair on real length distributions, but on CPU it wins by only a few percent (benchmarks/results/
# throughput_cpu_long_tail.md) and the last GPU measurement, on older code, had it slower. Pending the device
# check's padding-free row (benchmarks/device_run.sh, command 1, against simpo's default on the same batches): set
# True only when that table shows it faster.
PADDING_FREE_ON_CUDA = False


def padding_free(args) -> bool:
    """padding_free as set, or for auto: PADDING_FREE_ON_CUDA on a GPU with prefix sharing possible, else off."""
    if args.padding_free == "auto":
        return PADDING_FREE_ON_CUDA and args.device.type == "cuda" and args.prefix_sharing is not False
    return bool(args.padding_free)


def choose_layout(model: torch.nn.Module, args, pad_token_id: int) -> PlainLayout | SharedPrefixLayout:
    """prefix_sharing true must be exact for this model or raise; auto turns it on exactly when it is. With
    FlexAttention (flex_attention true, or auto on a GPU) the model's attention is switched to it, whatever kernel it
    was loaded with (flash_attention_2 in the paper configs cannot take the mask)."""
    lm = unwrap_model(model)
    if args.prefix_sharing is False:
        return PlainLayout(pad_token_id, args.label_pad_token_id)
    kernel = "flex_attention" if uses_flex(args) else lm.config._attn_implementation
    problem = prefix_sharing_problem(lm.config, kernel)
    if problem is not None:
        if args.prefix_sharing == "auto" and args.padding_free is not True:
            logger.info("prefix_sharing=auto: using the plain layout. %s", problem)
            return PlainLayout(pad_token_id, args.label_pad_token_id)
        raise ConfigError(problem)
    if kernel != lm.config._attn_implementation:
        logger.info(
            "Prefix sharing with FlexAttention block masks: attention switched from %s to flex_attention.",
            lm.config._attn_implementation,
        )
        lm.set_attn_implementation(kernel)
    # The attention scores come out in the autocast dtype under mixed precision, else in the weights' dtype.
    scores_dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else lm.dtype
    return SharedPrefixLayout(
        pad_token_id,
        args.label_pad_token_id,
        padding_free=padding_free(args),
        max_tokens_per_row=args.max_tokens_per_row,
        config=lm.config,
        mask_dtype=scores_dtype,
    )


def uses_flex(args) -> bool:
    """flex_attention true, or auto on a GPU; refused on a CPU, where FlexAttention runs forward only."""
    on_gpu = args.device.type == "cuda"
    if args.flex_attention is True and not on_gpu:
        raise ConfigError(
            "flex_attention: true needs a GPU: FlexAttention has no backward on CPU. Use"
            " flex_attention: auto (dense masks with eager/sdpa on CPU)."
        )
    return args.flex_attention is True or (args.flex_attention == "auto" and on_gpu)
