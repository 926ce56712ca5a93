"""The batch layout of a run, chosen once from the config and the model: plain (simpo/collator.py) or prefix sharing,
optionally padding-free (simpo/prefix_sharing.py). A layout is the trainer's data collator; for the batches it
collated it also builds the model's forward arguments (model_inputs) and counts their tokens as the plain layout
would run them (real_tokens)."""

import logging

import torch

from simpo.collator import PlainLayout
from simpo.config import SimPOConfig
from simpo.model import unwrap_model
from simpo.prefix_sharing import SharedPrefixLayout, prefix_sharing_problem

logger = logging.getLogger(__name__)


def choose_layout(model: torch.nn.Module, args: SimPOConfig, pad_token_id: int) -> PlainLayout | SharedPrefixLayout:
    """prefix_sharing true must be exact for this model or raise; auto turns it on exactly when it is."""
    lm = unwrap_model(model)
    if args.prefix_sharing is False:
        return PlainLayout(pad_token_id, args.label_pad_token_id)
    problem = prefix_sharing_problem(lm.config)
    if problem is not None:
        if args.prefix_sharing == "auto" and not args.padding_free:
            logger.info("prefix_sharing=auto: using the plain layout. %s", problem)
            return PlainLayout(pad_token_id, args.label_pad_token_id)
        raise ValueError(problem)
    # The attention scores come out in the autocast dtype under mixed precision, else in the weights' dtype.
    scores_dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else lm.dtype
    return SharedPrefixLayout(pad_token_id, args.label_pad_token_id, padding_free=args.padding_free,
                              max_tokens_per_row=args.max_tokens_per_row, config=lm.config, mask_dtype=scores_dtype)
