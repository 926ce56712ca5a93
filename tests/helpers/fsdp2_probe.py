"""Test launcher: fused log-probs under FSDP2 (torch's fully_shard) in 2 CPU processes over gloo.

    torchrun --nproc_per_node 2 tests/helpers/fsdp2_probe.py RESULT.json

accelerate only enables FSDP on GPUs, so this shards a tiny Llama the way accelerate_configs/fsdp.yaml makes
accelerate do it (fully_shard per decoder layer, then the root, reshard_after_forward=True) and runs the SimPO loss
through fused_token_logps and plain_token_logps. Both ranks get the same pairs, so FSDP's averaged gradient must equal
one process's gradient on them, which rank 0 computes on an unsharded copy. Cases: untied and tied heads, fp32 and a
bf16 MixedPrecisionPolicy (param_dtype bf16, fp32 gradients), 2 micro-batches of gradient accumulation (no gradient
sync on the first). Rank 0 writes RESULT.json: per case and path, the loss, the log-probs' grad_fn, the type of the
head weight between steps and the largest gradient difference from the single-process reference.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

from simpo.train.layouts.plain import PlainLayout
from simpo.train.logps import fused_token_logps, plain_token_logps
from simpo.train.loss import average_logps, simpo_loss

V = 53
SMALL = dict(
    vocab_size=V,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
)


def build(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=tied))


def micro_batches() -> list[dict]:
    torch.manual_seed(1)
    batches = []
    for lengths in ([(3, 4, 2), (5, 2, 6)], [(2, 3, 3), (4, 5, 1)]):
        rows = []
        for p, c, r in lengths:
            prompt, chosen, rejected = (torch.randint(3, V, (k,)).tolist() for k in (p, c, r))
            rows.append(
                {
                    "chosen_input_ids": prompt + chosen,
                    "chosen_labels": [-100] * p + chosen,
                    "rejected_input_ids": prompt + rejected,
                    "rejected_labels": [-100] * p + rejected,
                }
            )
        batches.append(PlainLayout(pad_token_id=0)(rows))
    return batches


def loss_and_logps(token_logps, model, batch):
    inputs = PlainLayout(pad_token_id=0).model_inputs(batch)
    logps, _ = token_logps(model, inputs, batch["score_index"], batch["score_labels"])
    avg = average_logps(logps, batch["score_seq"], batch["response_lengths"].numel())
    pairs = avg.numel() // 2
    return simpo_loss(avg[:pairs], avg[pairs:], 2.0, 1.0).mean(), logps


def accumulate(token_logps, model, batches, before_backward=lambda i: None):
    """Two micro-batches summed into .grad, as the Trainer accumulates them; returns the losses and last logps."""
    losses = []
    for i, batch in enumerate(batches):
        before_backward(i)
        loss, logps = loss_and_logps(token_logps, model, batch)
        (loss / len(batches)).backward()
        losses.append(loss.item())
    return losses, logps


def run_case(tied: bool, bf16: bool, batches: list[dict]) -> dict:
    reference = build(tied)
    ref_losses, _ = accumulate(plain_token_logps, reference, batches)
    ref_grads = {name: p.grad for name, p in reference.named_parameters()}
    out = {"reference_losses": ref_losses}
    for path, token_logps in (("fused", fused_token_logps), ("plain", plain_token_logps)):
        model = build(tied)
        mesh = init_device_mesh("cpu", (2,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        kwargs = {"mesh": mesh, "reshard_after_forward": True, **({"mp_policy": policy} if policy else {})}
        for layer in model.model.layers:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        for _ in range(2):  # the second round starts from resharded parameters and zeroed gradients
            model.zero_grad()
            head_between_steps = type(model.lm_head.weight).__name__
            losses, logps = accumulate(
                token_logps,
                model,
                batches,
                lambda i, model=model: model.set_requires_gradient_sync(i == len(batches) - 1),
            )
        grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
        out[path] = {
            "losses": losses,
            "grad_fn": logps.grad_fn.name(),
            "head_between_steps": head_between_steps,
            "max_grad_error": max((grads[n].float() - ref_grads[n]).abs().max().item() for n in ref_grads),
            "max_grad": max(g.abs().max().item() for g in ref_grads.values()),
        }
    return out


if __name__ == "__main__":
    dist.init_process_group("gloo")
    batches = micro_batches()
    results = {
        f"{'tied' if tied else 'untied'}-{'bf16' if bf16 else 'fp32'}": run_case(tied, bf16, batches)
        for tied in (False, True)
        for bf16 in (False, True)
    }
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
