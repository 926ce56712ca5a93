"""Shared by several test modules (moved from test_logps.py)."""

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
)

from simpo.train.layouts.plain import PlainLayout
from simpo.train.logps import fused_token_logps, plain_token_logps
from simpo.train.loss import average_logps, sft_nll, simpo_loss

V, H = 53, 16


SMALL = dict(
    vocab_size=V,
    hidden_size=H,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
)


FP32 = dict(rtol=0, atol=1e-5)


def simpo_objective(token_logps, token_seq, num_seqs):
    """The trainer's loss: SimPO on the averaged log-probs plus an SFT term, so both reach the gradients."""
    avg = average_logps(token_logps, token_seq, num_seqs)
    pairs = num_seqs // 2
    return simpo_loss(avg[:pairs], avg[pairs:], 2.0, 1.0).mean() + 0.3 * sft_nll(token_logps, token_seq, pairs)


def plain_head(hidden, weight, bias, labels, scale, softcap):
    """The reference: the model's head as transformers writes it, then plain_token_logps' log_softmax and gather."""
    logits = torch.nn.functional.linear(hidden, weight, bias) * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.float()
    return logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1), logits.detach().mean(-1)


def run_head(fn, dtype, tied, bias, scale, softcap):
    """Loss, logps, logit means and gradients of one head variant, with 6 sequences of which 2 have no token."""
    torch.manual_seed(0)
    n = 23
    weight = torch.randn(V, H).mul(0.5).to(dtype).requires_grad_()
    b = torch.randn(V).to(dtype).requires_grad_() if bias else None
    x = torch.randn(n, H).to(dtype).requires_grad_()
    labels, ids = torch.randint(0, V, (n,)), torch.randint(0, V, (n,))
    hidden = x + weight[ids] if tied else x  # tied: the head's weight is also the input embedding
    token_seq = torch.tensor([0, 1, 3, 4] * 6)[:n].sort().values  # sequences 2 and 5 are all masked
    logps, means = fn(hidden, weight, b, labels, scale, softcap)
    loss = simpo_objective(logps, token_seq, 6)
    loss.backward()
    grads = [t.grad for t in (x, weight, b) if t is not None]
    return [loss.detach(), logps.detach(), means] + grads


HEADS = [  # tied, bias, scale, softcap
    (False, False, 1.0, None),
    (True, False, 1.0, None),
    (False, True, 1.0, None),
    (False, False, 1.0, 3.0),
    (True, True, 0.25, None),
    (False, True, 0.5, 2.0),
    (True, False, 4.0, 30.0),
]


PLAIN = PlainLayout(pad_token_id=0)


def call(token_logps, model, batch, layout=PLAIN):
    """What the trainer does: the layout's forward arguments, then the log-probs of the scored tokens."""
    return token_logps(model, layout.model_inputs(batch), batch["score_index"], batch["score_labels"])


def features(label_pad=-100):
    """Hand-made tokenised pairs; the second pair's chosen response is empty (a sequence with no scored token)."""
    torch.manual_seed(1)
    rows = []
    for prompt, chosen, rejected in [(3, 4, 2), (5, 0, 6), (2, 3, 3), (4, 5, 1)]:
        p, c, r = (torch.randint(3, V, (k,)).tolist() for k in (prompt, chosen, rejected))
        rows.append(
            {
                "chosen_input_ids": p + c,
                "chosen_labels": [label_pad] * prompt + c,
                "rejected_input_ids": p + r,
                "rejected_labels": [label_pad] * prompt + r,
            }
        )
    return rows


def logps_loss_and_grads(fn, model, batch, layout=PLAIN):
    model.zero_grad()
    logps, means = call(fn, model, batch, layout)
    loss = simpo_objective(logps, batch["score_seq"], batch["response_lengths"].numel())
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), means, loss.detach(), grads


def assert_fused_equals_plain(model, batch=None, layout=PLAIN, **tolerance):
    batch = batch or layout(features())
    tolerance = tolerance or FP32
    plain = logps_loss_and_grads(plain_token_logps, model, batch, layout)
    fused = logps_loss_and_grads(fused_token_logps, model, batch, layout)
    for name, a, b in zip(["logps", "logit means", "loss"], fused, plain):
        torch.testing.assert_close(a, b, **tolerance, msg=name)
    assert fused[3].keys() == plain[3].keys()
    for name in plain[3]:
        torch.testing.assert_close(fused[3][name], plain[3][name], **tolerance, msg=name)


def tiny_llama(**overrides):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL, **overrides))
