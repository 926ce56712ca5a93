"""The loss and its metrics against an independent, scalar computation of the paper's formulas."""

import math

import pytest
import torch
from conftest import log_sigmoid

from simpo.train.loss import average_logps, preference_metrics, sft_nll, simpo_loss

CHOSEN = [-1.2, -0.4, -2.0]
REJECTED = [-1.0, -1.5, -2.1]


@pytest.mark.parametrize("beta,ratio,smoothing", [(2.0, 0.5, 0.0), (10.0, 0.3, 0.0), (2.5, 0.55, 0.2), (1.0, 0.0, 0.0)])
def test_sigmoid_loss_matches_paper(beta, ratio, smoothing):
    gamma = beta * ratio
    expected = []
    for chosen, rejected in zip(CHOSEN, REJECTED):
        z = beta * chosen - beta * rejected - gamma  # r_w - r_l - gamma
        expected.append(-(1 - smoothing) * log_sigmoid(z) - smoothing * log_sigmoid(-z))
    got = simpo_loss(torch.tensor(CHOSEN), torch.tensor(REJECTED), beta, gamma, "sigmoid", smoothing)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


def test_hinge_loss_matches_paper():
    beta, ratio = 2.0, 0.5
    unclipped = [1 - (beta * chosen - beta * rejected - beta * ratio) for chosen, rejected in zip(CHOSEN, REJECTED)]
    got = simpo_loss(torch.tensor(CHOSEN), torch.tensor(REJECTED), beta, beta * ratio, "hinge")
    assert got.tolist() == pytest.approx([max(0.0, u) for u in unclipped], abs=1e-6)
    # Pair 1's margin beats 1 + gamma: its unclipped hinge is negative and the loss clips it to exactly 0.
    assert unclipped[1] < 0 and got[1].item() == 0.0


def test_unknown_loss_type_is_an_error():
    with pytest.raises(ValueError, match="Unknown loss_type 'ipo'"):
        simpo_loss(torch.zeros(1), torch.zeros(1), 2.0, 0.5, "ipo")


def test_gamma_shifts_the_loss():
    chosen, rejected = torch.tensor([-1.0]), torch.tensor([-1.0])
    # Equal rewards: with gamma the pair is still penalised more than without.
    assert simpo_loss(chosen, rejected, 2.0, 1.0) > simpo_loss(chosen, rejected, 2.0, 0.0)
    assert simpo_loss(chosen, rejected, 2.0, 0.0).item() == pytest.approx(math.log(2), abs=1e-6)


def test_average_logps_divides_by_each_sequences_token_count():
    token_logps = torch.tensor([-1.0, -2.0, -3.0, -0.5, -4.0, -6.0])
    token_seq = torch.tensor([0, 0, 0, 1, 3, 3])
    got = average_logps(token_logps, token_seq, 4)
    # sequence 2 has no token: 0, never 0/0.
    assert got.tolist() == pytest.approx([-2.0, -0.5, 0.0, -5.0])
    assert torch.isfinite(got).all()


def test_sft_nll_is_token_mean_over_chosen_tokens_only():
    token_logps = torch.tensor([-1.0, -3.0, -2.0, -10.0])
    token_seq = torch.tensor([0, 0, 1, 2])  # 2 pairs: seqs 0,1 chosen; 2 rejected
    assert sft_nll(token_logps, token_seq, 2).item() == pytest.approx((1 + 3 + 2) / 3)


def test_metrics():
    beta = 2.0
    m = preference_metrics(torch.tensor(CHOSEN), torch.tensor(REJECTED), beta)
    assert m["rewards/chosen"].tolist() == pytest.approx([beta * w for w in CHOSEN])
    assert m["rewards/rejected"].tolist() == pytest.approx([beta * r for r in REJECTED])
    assert m["rewards/accuracies"].tolist() == [0.0, 1.0, 1.0]
    assert m["rewards/margins"].tolist() == pytest.approx([beta * (c - r) for c, r in zip(CHOSEN, REJECTED)])
    assert m["logps/chosen"].tolist() == pytest.approx(CHOSEN)
