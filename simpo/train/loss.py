"""SimPO as pure functions of per-token log-probs: averaging, the loss, the logged metrics.

Sequences are numbered 0..2B-1: sequence i < B is the chosen response of pair i, sequence B + i its rejected one.
Nothing here waits for the GPU (no .item(), bincount or boolean indexing): a step runs without host syncs.
"""

import torch
import torch.nn.functional as F

from simpo.errors import ConfigError


def average_logps(token_logps: torch.Tensor, token_seq: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Mean log-prob of each sequence's response tokens; token_seq[n] is the sequence of token n.

    A sequence with no response token gets 0 rather than 0/0 = NaN (the data pipeline drops such pairs anyway).
    """
    sums = torch.zeros(num_seqs, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, token_seq, token_logps)
    counts = torch.zeros_like(sums).index_add_(0, token_seq, torch.ones_like(token_logps))
    return sums / counts.clamp(min=1)


def simpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    beta: float,
    gamma: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair SimPO loss of the margin m = r_w - r_l - gamma, with rewards r = beta * avg_logp:
    sigmoid -log sigmoid(m), label-smoothed as the reference does; hinge relu(1 - m)."""
    margin = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
    if loss_type == "sigmoid":
        return -F.logsigmoid(margin) * (1 - label_smoothing) - F.logsigmoid(-margin) * label_smoothing
    if loss_type == "hinge":
        return torch.relu(1 - margin)
    raise ConfigError(f"Unknown loss_type {loss_type!r}: use 'sigmoid' or 'hinge'.")


def sft_nll(token_logps: torch.Tensor, token_seq: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """Token-mean negative log-likelihood over all chosen response tokens of the batch."""
    chosen = (token_seq < num_pairs).to(token_logps.dtype)
    return -(token_logps * chosen).sum() / chosen.sum().clamp(min=1)


def preference_metrics(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, beta: float, gamma: float = 0.0
) -> dict:
    """Per-pair tensors behind rewards/* and logps/*; the caller averages them (over ranks and steps).

    rewards/margin_over_gamma is 1 for a pair whose margin r_w - r_l beats the target gamma.
    """
    chosen_rewards = beta * chosen_avg_logps.detach()
    rejected_rewards = beta * rejected_avg_logps.detach()
    margins = chosen_rewards - rejected_rewards
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards/margins": margins,
        "rewards/margin_over_gamma": (margins > gamma).float(),
        "logps/chosen": chosen_avg_logps.detach(),
        "logps/rejected": rejected_avg_logps.detach(),
    }
