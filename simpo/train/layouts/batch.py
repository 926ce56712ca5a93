"""The batch contract between a layout (the trainer's data collator) and the trainer: what every layout hands over to
describe what to score, whatever its rows look like. B pairs make 2B sequences: sequence i < B is pair i's chosen
reply, B + i its rejected reply; the rows (R of them, L positions wide) hold those sequences as the layout packs them.

A ScoringBatch is a plain dict at run time (the Trainer and accelerate move dicts of tensors to the device), typed
here so that its keys and their shapes are written down once.
"""

from typing import TypedDict

import torch


class ScoringBatch(TypedDict):
    """The keys every layout's batch holds (PlainLayout: exactly these; SharedPrefixLayout adds SharedPrefixRows')."""

    input_ids: torch.Tensor  # [R, L] long: the rows the model runs on
    attention_mask: torch.Tensor  # [R, L] long: 1 on real tokens, 0 on padding (the forward's mask is the layout's)
    score_index: torch.Tensor  # [N] long: flat index (row * L + position) of each position that predicts a scored token
    score_labels: torch.Tensor  # [N] long: the response token predicted there
    score_seq: torch.Tensor  # [N] long: the sequence it belongs to, in [0, 2B)
    response_lengths: torch.Tensor  # [2B] long: scored tokens per sequence (so B = len // 2)


class SharedPrefixRows(ScoringBatch):
    """A prefix-shared batch's rows, [prompt | chosen | rejected] per pair (several pairs per row when padding-free),
    from which SharedPrefixLayout.model_inputs builds the attention mask."""

    position_ids: torch.Tensor  # [R, L] long: positions, restarting for the rejected reply after the prompt
    segment_ids: torch.Tensor  # [R, L] long: which pair of the row each token belongs to
    branch_ids: torch.Tensor  # [R, L] long: prompt, chosen or rejected (shared_prefix.PROMPT, CHOSEN, REJECTED)
